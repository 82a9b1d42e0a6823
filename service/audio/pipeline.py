"""From decoded samples to what the model needs: 16 kHz mono speech with quality figures.

mono mix -> DC / rumble removal -> resample to 16 kHz (torchaudio) -> silero-vad speech regions
-> clipping fraction and SNR. The embedding is taken over the speech regions only, so long pauses
and leading or trailing silence neither dilute nor bias the voiceprint.

On request (enrollment), the channels of a multi-channel clip that carry different signals (a call
recorded with one party per channel) are also prepared one by one, so that the caller can tell
whether they hold one voice; channels that are copies of each other cost nothing more.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torchaudio.functional as AF
from silero_vad import get_speech_timestamps_from_probs, load_silero_vad

from service import calibration as cal
from service.audio import MODEL_RATE
from service.audio.decode import DecodedAudio
from service.concurrency import Cancellation, ComputeThread, compute
from service.errors import ClippedAudio, InsufficientSpeech, NoisyAudio

HIGHPASS_HZ = 40.0  # below the lowest voice fundamental; removes DC drift and rumble
FRAME = 320  # 20 ms at 16 kHz, for energy figures
SPEECH_PAD_S = 0.03
# Channels whose samples correlate at least this much carry one signal (a mono source on every
# channel, joint-stereo codecs, a near-coincident microphone pair): they are only mixed.
SAME_SIGNAL_CORRELATION = 0.9
BLOCK_SAMPLES = 1 << 19  # input samples filtered at once (whole seconds, at least one)
VAD_WINDOW = 512  # samples per speech probability at 16 kHz (silero's; half that at 8 kHz)
VAD_CONTEXT = 64  # samples of the previous window silero hears with each one (at 16 kHz)
NARROWBAND_RATE = 8000  # sources at this rate or below can go to silero's 8 kHz network
VAD_ENCODER_STRIDES = (1, 2, 2, 1)  # silero's four encoder convolutions: 4 spectrum frames -> 1
VAD_HIDDEN = 128  # silero's LSTM width
VAD_STEP_WINDOWS = 1000  # windows per turn on the compute thread: 32 s of audio, about 30 ms

T = TypeVar("T")


@dataclass(frozen=True)
class QualityLimits:
    min_speech_seconds: float
    max_clipped_fraction: float
    min_snr_db: float


@dataclass
class PreparedAudio:
    """A clip ready for the model. `wave` is float32 mono at 16 kHz, the whole clip."""

    wave: np.ndarray
    source_rate: int
    speech: list[tuple[float, float]]  # speech regions, seconds from the clip's start
    clipped_fraction: float
    snr_db: float
    # Only when asked for, and only for a clip whose channels carry different signals: the speech
    # of each such channel (float32, 16 kHz, regions joined), in channel order.
    channel_speech: list[np.ndarray] = field(default_factory=list, repr=False)
    _speech_wave: np.ndarray | None = field(default=None, repr=False)

    @property
    def duration_s(self) -> float:
        return len(self.wave) / MODEL_RATE

    @property
    def speech_seconds(self) -> float:
        return float(sum(end - start for start, end in self.speech))

    def speech_wave(self) -> np.ndarray:
        """The speech regions joined end to end (float32, 16 kHz): what the model is given. Context
        around the regions, the whole clip and narrowband band fills were measured against it
        (`python -m scripts.model_input_study`, README "What the model is given") and not adopted."""
        if self._speech_wave is None:
            parts = [self.segment(start, end) for start, end in self.speech]
            self._speech_wave = np.concatenate(parts) if parts else self.wave[:0]
        return self._speech_wave

    def segment(self, start_s: float, end_s: float) -> np.ndarray:
        # round, not int: region bounds are sample indices / 16000, and int() of e.g. 1001 / 16000
        # * 16000 (= 1000.9999999999999) would land one sample early.
        return self.wave[round(start_s * MODEL_RATE) : round(end_s * MODEL_RATE)]

    def check(self, limits: QualityLimits) -> None:
        """Raise the matching 4xx error if the clip is not fit to use."""
        if self.speech_seconds < limits.min_speech_seconds:
            raise InsufficientSpeech(
                f"Insufficient speech content in audio: {self.speech_seconds:.1f} s of speech "
                f"detected, at least {limits.min_speech_seconds:g} s needed"
            )
        if self.clipped_fraction > limits.max_clipped_fraction:
            raise ClippedAudio(
                f"Audio is clipped: {100 * self.clipped_fraction:.2f} % of samples at full scale "
                f"(at most {100 * limits.max_clipped_fraction:g} % allowed)"
            )
        if self.snr_db < limits.min_snr_db:
            raise NoisyAudio(
                f"Audio is too noisy: estimated SNR {self.snr_db:.1f} dB "
                f"(at least {limits.min_snr_db:g} dB needed)"
            )


Runner = Callable[..., Any]
"""How a piece of torch work runs: ``run(fn, *args)`` (on the compute thread, or right here)."""


def _here(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


class _Network:
    """One of silero's two networks as batched work over a clip's windows: the 16 kHz one
    (`_model.`) or the 8 kHz one (`_model_8k.`), the same layers at half the scale (128-point
    spectrum, 256-sample windows, 32 samples of context)."""

    def __init__(self, state: dict[str, torch.Tensor], prefix: str, rate: int) -> None:
        weights = {
            name.removeprefix(prefix): tensor.detach().clone()
            for name, tensor in state.items()
            if name.startswith(prefix)
        }
        self.rate = rate
        self.window_samples = VAD_WINDOW * rate // MODEL_RATE
        self.context_samples = VAD_CONTEXT * rate // MODEL_RATE
        # silero's spectrum is a convolution with 2 * (n_fft / 2 + 1) rows, cos and sin of a DFT's
        # bins times a periodic Hann window; its first row (bin 0's cos) is the window itself. An FFT
        # of the windowed frames gives the same magnitudes for a tenth of the multiplications.
        self._window = weights["stft.forward_basis_buffer"][0, 0].clone()  # (n_fft,)
        self._encoder = [
            (weights[f"encoder.{i}.reparam_conv.weight"], weights[f"encoder.{i}.reparam_conv.bias"], stride)
            for i, stride in enumerate(VAD_ENCODER_STRIDES)
        ]
        self._lstm = torch.nn.LSTM(VAD_HIDDEN, VAD_HIDDEN, batch_first=True)
        with torch.no_grad():
            for ours, theirs in (("weight_ih_l0", "weight_ih"), ("weight_hh_l0", "weight_hh")):
                getattr(self._lstm, ours).copy_(weights[f"decoder.rnn.{theirs}"])
            for ours, theirs in (("bias_ih_l0", "bias_ih"), ("bias_hh_l0", "bias_hh")):
                getattr(self._lstm, ours).copy_(weights[f"decoder.rnn.{theirs}"])
        self._lstm.eval()
        self._out_weight = weights["decoder.decoder.2.weight"]  # (1, 128, 1)
        self._out_bias = weights["decoder.decoder.2.bias"]

    def probabilities(
        self, part: np.ndarray, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[list[float], tuple[torch.Tensor, torch.Tensor]]:
        """Speech probability of each window of `part` ``(context + k * window,)``: its windows
        with their contexts), and the LSTM state to carry on to the next part."""
        F = torch.nn.functional
        context, window = self.context_samples, self.window_samples
        # One thread: the matrices are small (a few MFLOP each), and a thread team's fork and join
        # on busy cores costs more than it gains; other clips run on the other cores.
        with torch.inference_mode(), torch_threads(1):
            frames = torch.from_numpy(part).unfold(0, context + window, window)  # (k, 576 at 16 kHz)
            x = F.pad(frames.unsqueeze(1), (0, context), mode="reflect")[:, 0]  # (k, 640)
            n_fft = len(self._window)
            x = x.unfold(1, n_fft, n_fft // 2) * self._window  # (k, 4, 256): 4 spectrum frames
            x = torch.fft.rfft(x).abs().transpose(1, 2)  # magnitude spectrum (k, 129, 4)
            for weight, bias, stride in self._encoder:
                x = F.relu(F.conv1d(x, weight, bias, stride=stride, padding=1))
            hidden, (h, c) = self._lstm(x.squeeze(-1).unsqueeze(0), state)  # (1, k, 128)
            logits = F.conv1d(F.relu(hidden[0]).unsqueeze(-1), self._out_weight, self._out_bias)
            return torch.sigmoid(logits).reshape(-1).tolist(), (h, c)


def vad_input(
    wave: np.ndarray, source_rate: int, narrowband_threshold: float | None
) -> tuple[np.ndarray, int]:
    """What the speech detector hears of 16 kHz `wave` whose source was at `source_rate`: the wave
    itself, or, with a `narrowband_threshold`, for a narrowband source (8 kHz or less) the 8 kHz
    signal for silero's 8 kHz network. The resampler left nothing above 4 kHz in such a wave, so
    every other sample is that signal."""
    if narrowband_threshold is not None and source_rate <= NARROWBAND_RATE:
        return wave[::2], NARROWBAND_RATE
    return wave, MODEL_RATE


class SpeechDetector:
    """silero-vad (its model ships in the wheel), run over a whole clip at once.

    silero's own loop calls its TorchScript model once per window (512 samples at 16 kHz),
    carrying a context of the previous window's last samples and an LSTM state: 313 calls per 10 s,
    about 80 ms of Python and per-call overhead. Only the LSTM depends on earlier windows, so the
    same weights run here as batched work over every window (spectrum and encoder) and one LSTM call
    over the sequence: the same probabilities to float rounding (about 2e-6), at a tenth of the time
    or less.

    With a `narrowband_threshold`, audio whose source was narrowband (telephone, 8 kHz) goes to
    silero's 8 kHz network at that threshold instead; it hears more of real callers, but neither
    identification nor diarization came out better for it on held-out speech, so it is off by
    default (`service.calibration.VAD_NARROWBAND_THRESHOLD`). Holds no state between clips; one
    clip at a time per detector all the same (the front end pools them).
    """

    def __init__(
        self, threshold: float = 0.5, narrowband_threshold: float | None = cal.VAD_NARROWBAND_THRESHOLD
    ) -> None:
        self.threshold = threshold
        self.narrowband_threshold = narrowband_threshold
        state = load_silero_vad(onnx=False).state_dict()
        self._networks = {
            MODEL_RATE: _Network(state, "_model.", MODEL_RATE),
            NARROWBAND_RATE: _Network(state, "_model_8k.", NARROWBAND_RATE),
        }

    def regions(
        self, wave: np.ndarray, run: Runner = _here, source_rate: int = MODEL_RATE
    ) -> list[tuple[float, float]]:
        """Speech regions of 16 kHz `wave` (from a source at `source_rate`), in seconds: silero's
        `get_speech_timestamps` (its defaults, our thresholds and padding), the probabilities
        computed through `run` a few seconds of windows at a time (other work can run between them)."""
        heard, rate = vad_input(wave, source_rate, self.narrowband_threshold)
        network = self._networks[rate]
        window, context = network.window_samples, network.context_samples
        windows = -(-len(heard) // window)
        # Each window is heard with the samples before it (zeros before the clip), and the last one
        # is zero-padded, as silero's loop does.
        padded = np.zeros(context + windows * window, dtype=np.float32)
        padded[context : context + len(heard)] = heard
        probabilities: list[float] = []
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        for first in range(0, windows, VAD_STEP_WINDOWS):
            last = min(windows, first + VAD_STEP_WINDOWS)
            part = padded[first * window : last * window + context]
            step, state = run(network.probabilities, part, state)
            probabilities += step
        stamps = get_speech_timestamps_from_probs(
            probabilities,
            sampling_rate=rate,
            threshold=self.narrowband_threshold if rate != MODEL_RATE else self.threshold,
            speech_pad_ms=int(SPEECH_PAD_S * 1000),
            audio_length_samples=len(heard),
        )
        return [(s["start"] / rate, s["end"] / rate) for s in stamps]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count for this OS thread, for the duration."""
    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_mono_16k(
    audio: DecodedAudio, block_samples: int = BLOCK_SAMPLES, run: Runner = _here
) -> tuple[np.ndarray, float]:
    """Mix down, remove DC and rumble, resample. Returns (wave, clipped fraction).

    Filtering and resampling go a few seconds at a time (`_filter_16k`), each block through `run`:
    torch's 1-D convolution, under both, took about 70 bytes per sample, 340 MB for 5 minutes at
    16 kHz in one go.
    """
    samples = audio.samples
    clipped = 0.0
    if samples.size:
        # Each instant's peak without an abs() copy of every channel (a long clip is large).
        clipped = float(np.mean(np.maximum(samples.max(axis=0), -samples.min(axis=0)) >= 0.999))
    mono = np.ascontiguousarray(samples.mean(axis=0), dtype=np.float32)
    mono -= mono.mean()  # in place: `mono` is a fresh array
    return _filter_16k(mono, audio.sample_rate, block_samples, run), clipped


def _filter_16k(mono: np.ndarray, rate: int, block_samples: int, run: Runner) -> np.ndarray:
    """High-pass at `rate`, then resample to 16 kHz, in blocks of whole seconds with context.

    Each block is filtered with half a second or more of the signal before it (the 40 Hz
    high-pass forgets its start within about 5 ms) and after it (the resampling kernel reaches
    a few samples), and only the block's own span is kept: the result is the whole-clip result to
    float rounding. Blocks start on whole seconds, so every block meets the resampler's phase.
    """
    n = len(mono)
    block = rate * max(1, block_samples // rate)
    if n <= block:
        result: np.ndarray = run(_filter_block, torch.from_numpy(mono), rate)
        return result
    step = rate // math.gcd(rate, MODEL_RATE)  # input samples per resampling phase cycle
    context = max(step, (rate // 2) // step * step)
    out = np.empty(math.ceil(n * MODEL_RATE / rate), dtype=np.float32)
    for start in range(0, n, block):
        end = min(n, start + block)
        lo = max(0, start - context)
        part = run(_filter_block, torch.from_numpy(mono[lo : min(n, end + context)]), rate)
        skip = (start - lo) * MODEL_RATE // rate
        first = start * MODEL_RATE // rate
        last = math.ceil(end * MODEL_RATE / rate)
        out[first:last] = part[skip : skip + last - first]
    return out


def _filter_block(mono: torch.Tensor, rate: int) -> np.ndarray:
    mono = AF.highpass_biquad(mono, rate, HIGHPASS_HZ)
    if rate != MODEL_RATE:
        mono = AF.resample(mono, rate, MODEL_RATE)
    return mono.numpy().astype(np.float32, copy=False)


def to_16k(signal: np.ndarray, rate: int, run: Runner = _here) -> np.ndarray:
    """One channel ``(n,)`` at `rate` -> float32 at 16 kHz, DC and rumble removed."""
    wave = np.array(signal, dtype=np.float32)  # a copy: cleaned in place
    wave -= wave.mean()
    return _filter_16k(wave, rate, BLOCK_SAMPLES, run)


def distinct_channels(samples: np.ndarray) -> list[int]:
    """The channels of `samples` ``(channels, n)`` that carry a signal of their own: not silent, and
    not correlated at `SAME_SIGNAL_CORRELATION` or more with an earlier kept channel."""
    # Covariances from the Gram matrix: no centred copy of a long many-channel clip.
    means = samples.mean(axis=1, dtype=np.float64)
    gram = (samples @ samples.T).astype(np.float64)
    cov = gram - samples.shape[1] * np.outer(means, means)
    power = np.maximum(np.diag(cov), 0.0)
    kept: list[int] = []
    for ch in range(samples.shape[0]):
        if power[ch] < 1e-8:  # digital silence, or a DC offset only
            continue
        if all(abs(cov[ch, k]) < SAME_SIGNAL_CORRELATION * np.sqrt(power[ch] * power[k]) for k in kept):
            kept.append(ch)
    return kept


def channel_speech(audio: DecodedAudio, detector: SpeechDetector, run: Runner = _here) -> list[np.ndarray]:
    """The speech of each channel that carries a signal of its own, when there are two or more such
    channels; else an empty list (the mix is all there is to hear)."""
    channels = distinct_channels(audio.samples) if audio.samples.shape[0] > 1 else []
    if len(channels) < 2:
        return []
    out = []
    for ch in channels:
        wave = to_16k(audio.samples[ch], audio.sample_rate, run)
        regions = detector.regions(wave, run, audio.sample_rate)
        parts = [wave[round(a * MODEL_RATE) : round(b * MODEL_RATE)] for a, b in regions]
        out.append(np.concatenate(parts) if parts else wave[:0])
    return out


def estimate_snr_db(wave: np.ndarray, speech: list[tuple[float, float]]) -> float:
    """Speech-to-background energy ratio in dB from 20 ms frames.

    Background is the frames outside the VAD's speech regions when there are enough of them,
    otherwise the quietest 10 % of frames (pauses inside continuous speech).
    """
    frames = len(wave) // FRAME
    if frames == 0:
        return 0.0
    energy = (wave[: frames * FRAME].reshape(frames, FRAME).astype(np.float64) ** 2).mean(axis=1) + 1e-12
    is_speech = np.zeros(frames, dtype=bool)
    for start, end in speech:
        is_speech[int(start * MODEL_RATE) // FRAME : int(end * MODEL_RATE) // FRAME + 1] = True
    if not is_speech.any():
        return 0.0
    speech_energy = float(energy[is_speech].mean())
    background = energy[~is_speech]
    enough_background = len(background) >= 15  # 0.3 s of non-speech
    noise_energy = float(np.median(background) if enough_background else np.percentile(energy, 10))
    return float(min(10.0 * np.log10(speech_energy / noise_energy), 99.0))


def prepare(
    audio: DecodedAudio,
    detector: SpeechDetector,
    exclusive: ComputeThread | None = compute,
    cancel: Cancellation | None = None,
    *,
    channels: bool = False,
    source_rate: int | None = None,
) -> PreparedAudio:
    """Resample and find speech; with `channels`, also in each channel that carries a signal of its
    own (`PreparedAudio.channel_speech`). `source_rate`: the rate the audio was first heard at, if
    it was converted since (`AudioInput.source_rate`); else its own. The torch work runs on
    `exclusive`, the process's compute thread, where the model shares the cores, a few seconds of
    audio per turn; in the calling thread (None) where each caller has a core of its own. A
    `cancel` set meanwhile stops it (RequestCancelled)."""
    run: Runner = _here if exclusive is None else functools.partial(exclusive.run, cancel=cancel)
    rate = source_rate or audio.sample_rate
    wave, clipped = to_mono_16k(audio, run=run)
    speech = detector.regions(wave, run, rate)
    per_channel = channel_speech(audio, detector, run) if channels else []
    return PreparedAudio(
        wave=wave,
        source_rate=rate,
        speech=speech,
        clipped_fraction=clipped,
        snr_db=estimate_snr_db(wave, speech),
        channel_speech=per_channel,
    )
