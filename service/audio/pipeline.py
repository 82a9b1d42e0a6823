"""From decoded samples to what the model needs: 16 kHz mono speech with quality figures.

mono mix -> DC / rumble removal -> resample to 16 kHz (torchaudio) -> silero-vad speech regions
-> clipping fraction and SNR. The embedding is taken over the speech regions only, so long pauses
and leading or trailing silence neither dilute nor bias the voiceprint.
"""

from __future__ import annotations

import math
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
BLOCK_SAMPLES = 1 << 19  # input samples filtered at once (whole seconds, at least one)


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


def to_mono_16k(audio: DecodedAudio, block_samples: int = BLOCK_SAMPLES) -> tuple[np.ndarray, float]:
    """Mix down, remove DC and rumble, resample. Returns (wave, clipped fraction).

    Filtering and resampling go a few seconds at a time (`_filter_16k`): torch's 1-D convolution,
    under both, took about 70 bytes per sample, 340 MB for 5 minutes at 16 kHz in one go.
    """
    samples = audio.samples
    clipped = 0.0
    if samples.size:
        # Each instant's peak without an abs() copy of every channel (a long clip is large).
        clipped = float(np.mean(np.maximum(samples.max(axis=0), -samples.min(axis=0)) >= 0.999))
    mono = np.ascontiguousarray(samples.mean(axis=0), dtype=np.float32)
    mono -= mono.mean()  # in place: `mono` is a fresh array
    return _filter_16k(mono, audio.sample_rate, block_samples), clipped


def _filter_16k(mono: np.ndarray, rate: int, block_samples: int) -> np.ndarray:
    """High-pass at `rate`, then resample to 16 kHz, in blocks of whole seconds with context.

    Each block is filtered with half a second or more of the signal before it (the 40 Hz
    high-pass forgets its start within about 5 ms) and after it (the resampling kernel reaches
    a few samples), and only the block's own span is kept: the result is the whole-clip result to
    float rounding. Blocks start on whole seconds, so every block meets the resampler's phase.
    """
    n = len(mono)
    block = rate * max(1, block_samples // rate)
    if n <= block:
        return _filter_block(torch.from_numpy(mono), rate)
    step = rate // math.gcd(rate, TARGET_RATE)  # input samples per resampling phase cycle
    context = max(step, (rate // 2) // step * step)
    out = np.empty(math.ceil(n * TARGET_RATE / rate), dtype=np.float32)
    for start in range(0, n, block):
        end = min(n, start + block)
        lo = max(0, start - context)
        part = _filter_block(torch.from_numpy(mono[lo : min(n, end + context)]), rate)
        skip = (start - lo) * TARGET_RATE // rate
        first = start * TARGET_RATE // rate
        last = math.ceil(end * TARGET_RATE / rate)
        out[first:last] = part[skip : skip + last - first]
    return out


def _filter_block(mono: torch.Tensor, rate: int) -> np.ndarray:
    mono = AF.highpass_biquad(mono, rate, HIGHPASS_HZ)
    if rate != TARGET_RATE:
        mono = AF.resample(mono, rate, TARGET_RATE)
    return mono.numpy().astype(np.float32, copy=False)


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
    audio: DecodedAudio, detector: SpeechDetector, exclusive: AbstractContextManager[Any] = compute_lock
) -> PreparedAudio:
    """Resample and find speech. `exclusive` is held around the torch work: the process-wide
    `compute_lock` where the model shares the cores; nothing where each caller has a core of its own."""
    with exclusive:
        wave, clipped = to_mono_16k(audio)
        speech = detector.regions(wave)
    return PreparedAudio(
        wave=wave,
        source_rate=audio.sample_rate,
        speech=speech,
        clipped_fraction=clipped,
        snr_db=estimate_snr_db(wave, speech),
    )
