"""From decoded samples to what the model needs: 16 kHz mono speech with quality figures.

mono mix -> DC / rumble removal -> resample to 16 kHz (torchaudio) -> silero-vad speech regions
-> clipping fraction and SNR. The embedding is taken over the speech regions only, so long pauses
and leading or trailing silence neither dilute nor bias the voiceprint.

On request (enrollment), the channels of a multi-channel clip that carry different signals (a call
recorded with one party per channel) are also prepared one by one, so that the caller can tell
whether they hold one voice; channels that are copies of each other cost nothing more.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from silero_vad import get_speech_timestamps, load_silero_vad

from service.audio.decode import DecodedAudio
from service.concurrency import compute_lock
from service.errors import ClippedAudio, InsufficientSpeech, NoisyAudio

TARGET_RATE = 16_000
HIGHPASS_HZ = 40.0  # below the lowest voice fundamental; removes DC drift and rumble
FRAME = 320  # 20 ms at 16 kHz, for energy figures
SPEECH_PAD_S = 0.03
# Channels whose samples correlate at least this much carry one signal (a mono source on every
# channel, joint-stereo codecs, a near-coincident microphone pair): they are only mixed.
SAME_SIGNAL_CORRELATION = 0.9


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
        return len(self.wave) / TARGET_RATE

    @property
    def speech_seconds(self) -> float:
        return float(sum(end - start for start, end in self.speech))

    def speech_wave(self) -> np.ndarray:
        """The speech regions joined end to end (float32, 16 kHz)."""
        if self._speech_wave is None:
            parts = [self.segment(start, end) for start, end in self.speech]
            self._speech_wave = np.concatenate(parts) if parts else self.wave[:0]
        return self._speech_wave

    def segment(self, start_s: float, end_s: float) -> np.ndarray:
        # round, not int: region bounds are sample indices / 16000, and int() of e.g. 1001 / 16000
        # * 16000 (= 1000.9999999999999) would land one sample early.
        return self.wave[round(start_s * TARGET_RATE) : round(end_s * TARGET_RATE)]

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


class SpeechDetector:
    """silero-vad (its model ships in the wheel). Stateful: callers hold `compute_lock`."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._model = load_silero_vad(onnx=False)

    def regions(self, wave: np.ndarray) -> list[tuple[float, float]]:
        with torch.inference_mode():
            stamps = get_speech_timestamps(
                torch.from_numpy(wave),
                self._model,
                threshold=self.threshold,
                sampling_rate=TARGET_RATE,
                speech_pad_ms=int(SPEECH_PAD_S * 1000),
            )
        return [(s["start"] / TARGET_RATE, s["end"] / TARGET_RATE) for s in stamps]


def to_mono_16k(audio: DecodedAudio) -> tuple[np.ndarray, float]:
    """Mix down, remove DC and rumble, resample. Returns (wave, clipped fraction)."""
    samples = audio.samples
    clipped = float(np.mean(np.max(np.abs(samples), axis=0) >= 0.999)) if samples.size else 0.0
    return to_16k(samples.mean(axis=0), audio.sample_rate), clipped


def to_16k(signal: np.ndarray, rate: int) -> np.ndarray:
    """One channel ``(n,)`` at `rate` -> float32 at 16 kHz, DC and rumble removed."""
    wave = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
    wave = wave - wave.mean()
    wave = AF.highpass_biquad(wave, rate, HIGHPASS_HZ)
    if rate != TARGET_RATE:
        wave = AF.resample(wave, rate, TARGET_RATE)
    return wave.numpy().astype(np.float32, copy=False)


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


def channel_speech(audio: DecodedAudio, detector: SpeechDetector) -> list[np.ndarray]:
    """The speech of each channel that carries a signal of its own, when there are two or more such
    channels; else an empty list (the mix is all there is to hear)."""
    channels = distinct_channels(audio.samples) if audio.samples.shape[0] > 1 else []
    if len(channels) < 2:
        return []
    out = []
    for ch in channels:
        wave = to_16k(audio.samples[ch], audio.sample_rate)
        regions = detector.regions(wave)
        parts = [wave[round(a * TARGET_RATE) : round(b * TARGET_RATE)] for a, b in regions]
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
        is_speech[int(start * TARGET_RATE) // FRAME : int(end * TARGET_RATE) // FRAME + 1] = True
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
    exclusive: AbstractContextManager[Any] = compute_lock,
    *,
    channels: bool = False,
) -> PreparedAudio:
    """Resample and find speech; with `channels`, also in each channel that carries a signal of its
    own (`PreparedAudio.channel_speech`). `exclusive` is held around the torch work: the process-wide
    `compute_lock` where the model shares the cores; nothing where each caller has a core of its own."""
    with exclusive:
        wave, clipped = to_mono_16k(audio)
        speech = detector.regions(wave)
        per_channel = channel_speech(audio, detector) if channels else []
    return PreparedAudio(
        wave=wave,
        source_rate=audio.sample_rate,
        speech=speech,
        clipped_fraction=clipped,
        snr_db=estimate_snr_db(wave, speech),
        channel_speech=per_channel,
    )
