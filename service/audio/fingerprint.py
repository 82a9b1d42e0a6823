"""Content fingerprints: is a new sample the same recording as an earlier one?

Speaker embeddings cannot tell a re-encoded or noise-added copy of a clip from another utterance of
the same speaker in the same session (their cosines overlap), so near-copies are caught by what was
said and how it sounds over time instead. The fingerprint is the sign pattern of band-energy
changes (Haitsma & Kalker, 2002) in 16 telephone-band (300-3400 Hz) differences every 20 ms: it
survives codecs, 8 kHz band limits, gain and moderate noise, and it is one bit per band and frame,
far too little to reconstruct any audio from. Two fingerprints are compared at every time offset.
"""

from __future__ import annotations

import itertools

import numpy as np

RATE = 16_000
HOP = 320  # 20 ms
N_FFT = 512
BANDS = 17  # 16 differences
LOW_HZ, HIGH_HZ = 300.0, 3400.0
MIN_OVERLAP = 100  # frames (2 s) two clips must share at an offset for it to count


def _band_edges() -> np.ndarray:
    mel = np.linspace(_mel(LOW_HZ), _mel(HIGH_HZ), BANDS + 1)
    hz = 700.0 * (10 ** (mel / 2595.0) - 1.0)
    return np.clip(np.round(hz / RATE * N_FFT).astype(int), 1, N_FFT // 2)


def _mel(hz: float) -> float:
    return float(2595.0 * np.log10(1.0 + hz / 700.0))


_EDGES = _band_edges()
_WINDOW = np.hanning(N_FFT).astype(np.float32)


def fingerprint(wave: np.ndarray) -> bytes:
    """Packed sign bits, ``(frames, 16)``, of a float32 16 kHz waveform."""
    if len(wave) < N_FFT + HOP:
        return b""
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float32), N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
    bands = np.stack([power[:, a:b].sum(axis=1) for a, b in itertools.pairwise(_EDGES)], 1)
    energy = np.log(bands + 1e-10)
    across = energy[:, :-1] - energy[:, 1:]
    bits = (across[1:] - across[:-1]) > 0
    return np.packbits(bits, axis=None).tobytes()


def unpack(blob: bytes) -> np.ndarray:
    """``(frames, 16)`` of +1/-1 float32."""
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))
    usable = len(bits) // (BANDS - 1) * (BANDS - 1)
    return bits[:usable].reshape(-1, BANDS - 1).astype(np.float32) * 2.0 - 1.0


def similarity(a: bytes, b: bytes) -> float:
    """Best agreement (0 = unrelated, 1 = identical) of two fingerprints over all time offsets
    that overlap by at least `MIN_OVERLAP` frames; 0.0 if none does."""
    x, y = unpack(a), unpack(b)
    if min(len(x), len(y)) < MIN_OVERLAP:
        return 0.0
    size = 1 << int(np.ceil(np.log2(len(x) + len(y))))
    spectrum = np.fft.rfft(x, size, axis=0) * np.conj(np.fft.rfft(y, size, axis=0))
    corr = np.fft.irfft(spectrum.sum(axis=1), size)  # corr[lag]: x shifted against y
    lags = np.arange(size)
    lags = np.where(lags < size // 2, lags, lags - size)
    overlap = np.minimum(len(x), len(y) + lags) - np.maximum(0, lags)
    valid = overlap >= MIN_OVERLAP
    if not valid.any():
        return 0.0
    agreement = corr[valid] / (overlap[valid] * (BANDS - 1))
    return float(max(agreement.max(), 0.0))
