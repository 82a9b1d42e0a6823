"""The telephone band: which clips are narrowband, and what a wideband clip sounds like on a phone.

A voiceprint enrolled from 16 kHz audio and a call heard through a telephone codec differ by the
channel more than by the voice: at the decision rule's threshold, 13 of 57 genuine G.711 calls to
a 16 kHz tenant were rejected against 3 of 57 when enrollment and call share the channel
(`python -m scripts.calibrate_decisions`, report half). So a
wideband enrollment sample also gets a narrowband twin, the vector of its speech after a telephone
channel simulation (`telephone_band`), and a narrowband clip is scored against the twins.

A clip is narrowband when its source rate is 8 kHz or less, or when its speech carries almost no
power above 3.8 kHz (8 kHz audio resampled to 16 kHz or more before it was sent).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
import torchaudio.functional as AF
from scipy import signal

from service.audio import MODEL_RATE, Band
from service.audio.pipeline import PreparedAudio, torch_threads

TELEPHONE_RATE = 8_000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
HIGH_BAND_HZ = 3_800.0
# Share of the speech's power above `HIGH_BAND_HZ` from which a clip counts as wideband. Measured
# (`python -m scripts.band_share`, over the speech the front end finds): the 271 eval-speech clips
# at 16 kHz 0.00035-0.58 (median 0.023; 2 under this line: recordings already band-limited), the
# same through MP3 24 kbit/s 0.00034-0.55; through G.711 and resampled back to 16 kHz at most
# 0.0006 (median 2e-5); eval-telephone's 193 real calls at most 0.00082 (median 1e-5).
WIDEBAND_SHARE = 1e-3
FFT_SIZE = 512
PEAK = 0.5  # the simulation's output level (the model is insensitive to level; codecs are not)


def high_band_share(speech: np.ndarray) -> float:
    """Share of the power of `speech` (1-D float32, 16 kHz) above `HIGH_BAND_HZ`, over Hann-windowed
    frames of `FFT_SIZE` samples; 0 for a wave shorter than a frame or silent."""
    frames = len(speech) // FFT_SIZE
    if frames == 0:
        return 0.0
    blocks = speech[: frames * FFT_SIZE].reshape(frames, FFT_SIZE).astype(np.float32)
    power = (np.abs(np.fft.rfft(blocks * np.hanning(FFT_SIZE).astype(np.float32), axis=1)) ** 2).sum(axis=0)
    total = float(power.sum())
    if total <= 0.0:
        return 0.0
    high = np.fft.rfftfreq(FFT_SIZE, 1.0 / MODEL_RATE) > HIGH_BAND_HZ
    return float(power[high].sum()) / total


def band_of(source_rate: int, speech: np.ndarray) -> Band:
    """The band of a clip recorded at `source_rate` whose speech, at 16 kHz, is `speech`."""
    if source_rate <= TELEPHONE_RATE:
        return Band.NARROW
    return Band.WIDE if high_band_share(speech) >= WIDEBAND_SHARE else Band.NARROW


@cache
def _sections(rate: int) -> np.ndarray:
    """Second-order sections of the band-pass: torchaudio's (RBJ cookbook) high-pass and low-pass
    biquads at Q 0.707 on `TELEPHONE_BAND_HZ`, in float64, twice over."""
    q = 0.707
    sections = []
    for cutoff, sign in ((TELEPHONE_BAND_HZ[0], -1.0), (TELEPHONE_BAND_HZ[1], 1.0)):
        w0 = 2.0 * math.pi * cutoff / rate
        cos, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
        edge = (1.0 - sign * cos) / 2.0  # the high-pass's b0 (sign -1) or the low-pass's
        a0 = 1.0 + alpha
        sections.append(
            [edge / a0, sign * 2.0 * edge / a0, edge / a0, 1.0, -2.0 * cos / a0, (1.0 - alpha) / a0]
        )
    return np.array(sections * 2, dtype=np.float64)


@cache
def _peak_gain(rate: int) -> float:
    """How far any of the band-pass's biquads can raise a wave's peak: the largest sum of
    absolute values of the impulse responses of its first one, two, three and four sections."""
    response = np.zeros(rate, dtype=np.float64)  # a second: the responses have died out long before
    response[0] = 1.0
    gains = []
    for section in _sections(rate):
        response = signal.sosfilt(section[np.newaxis], response)
        gains.append(float(np.abs(response).sum()))
    return max(gains)


def band_pass(samples: np.ndarray, rate: int) -> np.ndarray:
    """`TELEPHONE_BAND_HZ` band-pass of 1-D float `samples` at `rate` (two biquads on each side),
    float32. Each biquad's output is clipped to [-1, 1], as torchaudio's `lfilter` does (the twins
    already stored were made with it); a wave too quiet for any biquad to reach that goes through
    all four in one call."""
    wave = np.asarray(samples, dtype=np.float64)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak * _peak_gain(rate) <= 1.0:
        wave = np.asarray(signal.sosfilt(_sections(rate), wave))
    else:
        for section in _sections(rate):
            wave = np.asarray(signal.sosfilt(section[np.newaxis], wave))
            np.clip(wave, -1.0, 1.0, out=wave)
    return wave.astype(np.float32)


def telephone_band(wave: np.ndarray) -> np.ndarray:
    """What a telephone line makes of 16 kHz speech `wave` (1-D float32): resampled to 8 kHz,
    band-passed to 300-3400 Hz and back at 16 kHz, its peak at `PEAK` (float32, same length)."""
    # One thread: this runs on the request's thread beside the model's, and takes milliseconds.
    with torch_threads(1):
        narrow = AF.resample(
            torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), MODEL_RATE, TELEPHONE_RATE
        )
        back = AF.resample(
            torch.from_numpy(band_pass(narrow.numpy(), TELEPHONE_RATE)), TELEPHONE_RATE, MODEL_RATE
        )
    out = back.numpy()[: len(wave)]
    if len(out) < len(wave):
        out = np.pad(out, (0, len(wave) - len(out)))
    top = float(np.max(np.abs(out))) if out.size else 0.0
    return np.asarray(out * (PEAK / top) if top > 0 else out, dtype=np.float32)


def clip_band(prepared: PreparedAudio) -> Band:
    """The band a prepared clip is scored in."""
    return band_of(prepared.source_rate, prepared.speech_wave())
