"""Content fingerprints: is a new sample the same recording as an earlier one?

Speaker embeddings cannot tell a re-encoded or noise-added copy of a clip from another utterance of
the same speaker in the same session (their cosines overlap), so near-copies are caught by what was
said and how it sounds over time instead. The fingerprint is the sign pattern of band-energy
changes (Haitsma & Kalker, 2002) in 16 telephone-band (300-3400 Hz) differences every 20 ms: it
survives codecs, 8 kHz band limits, gain and moderate noise, and it is one bit per band and frame,
far too little to reconstruct any audio from.

Two fingerprints are compared at every time offset, and also as if one were played up to 10 %
faster or slower (a wrong `sampleRate`, a 44.1/48 kHz mix-up, a pitch or speed effect) or
backwards. A speed change stretches the frames in time and moves every frequency by the same
factor, so the stored print is stretched in time and its bits are moved along the (mel-spaced)
bands to where that factor puts them; both are done at comparison time, so the stored form is the
same for every sample, old or new. Comparing two 10 s prints this way takes about 4 ms on one core
(0.2 ms at one speed and direction only); computing a print, about 1 ms.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np

from service.audio import MODEL_RATE

HOP = 320  # 20 ms
N_FFT = 512
BANDS = 17  # 16 differences
LOW_HZ, HIGH_HZ = 300.0, 3400.0
MIN_OVERLAP = 100  # frames (2 s) two clips must share at an offset for it to count

# Speed factors tried: coarse steps of 2.5 % up to +-10 % (band maps and stretch of the stored
# print), each refined by steps of 0.25 % up to +-1.25 % (stretch of the new print). A rate that
# is off by 0.125 % shifts the alignment by under a frame over 15 s; by 1 % it already halves the
# agreement of a 10 s copy.
COARSE = 1.025 ** np.arange(-4, 5)
FINE = 1.0025 ** np.arange(-5, 6)
# Near-digital silence would give every clip the same bits (all band differences equal): its band
# energies get a random floor at about -90 dBFS instead, seeded by the audio so it stays repeatable.
SILENCE_POWER = 1e-9


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return np.asarray(2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0))


def _hz(mel: np.ndarray) -> np.ndarray:
    return np.asarray(700.0 * (10 ** (mel / 2595.0) - 1.0))


_MEL_EDGES = np.linspace(_mel(LOW_HZ), _mel(HIGH_HZ), BANDS + 1)
_EDGES = np.clip(np.round(_hz(_MEL_EDGES) / MODEL_RATE * N_FFT).astype(int), 1, N_FFT // 2)
_WINDOW = np.hanning(N_FFT).astype(np.float32)
_FLOOR = (SILENCE_POWER * float(np.sum(_WINDOW**2)) * np.diff(_EDGES)).astype(np.float32)


def fingerprint(wave: np.ndarray) -> bytes:
    """Packed sign bits, ``(frames, 16)``, of a float32 16 kHz waveform."""
    if len(wave) < N_FFT + HOP:
        return b""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(wave, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
    bands = np.stack([power[:, a:b].sum(axis=1) for a, b in itertools.pairwise(_EDGES)], 1)
    dither = np.random.default_rng(zlib.crc32(wave.tobytes())).random(bands.shape, dtype=np.float32)
    energy = np.log(bands + 2.0 * _FLOOR * dither + 1e-10)
    across = energy[:, :-1] - energy[:, 1:]
    bits = (across[1:] - across[:-1]) > 0
    return np.packbits(bits, axis=None).tobytes()


def unpack(blob: bytes) -> np.ndarray:
    """``(frames, 16)`` of +1/-1 float32."""
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))
    usable = len(bits) // (BANDS - 1) * (BANDS - 1)
    return bits[:usable].reshape(-1, BANDS - 1).astype(np.float32) * 2.0 - 1.0


def _bit_map(factor: float) -> np.ndarray:
    """``(16, 16)``: bits of a print played `factor` times faster, moved to where the original has
    them (each bit sits on a band edge; a frequency f there was f / factor in the original). An edge
    that falls between two others is shared by both, in proportion; one that falls outside is lost."""
    step = _MEL_EDGES[1] - _MEL_EDGES[0]
    inner = _MEL_EDGES[1:-1]
    position = np.round((_mel(_hz(inner) * factor) - inner[0]) / step, 6)  # in the fast print
    weights = np.zeros((BANDS - 1, BANDS - 1), dtype=np.float32)
    for original, where in enumerate(position):
        low = int(np.floor(where))
        for index, share in ((low, 1.0 - (where - low)), (low + 1, where - low)):
            if 0 <= index < BANDS - 1 and share > 0:
                weights[index, original] += share
    return weights


_MAPS = np.stack([_bit_map(float(f)) for f in COARSE])


def _stretched(prints: np.ndarray, factors: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(len(factors), length, 16)``: `prints` resampled in time (nearest frame) to `factor` times
    as many frames, zero-padded; and each one's length."""
    out = np.zeros((len(factors), length, prints.shape[1]), dtype=np.float32)
    lengths = np.empty(len(factors), dtype=np.float32)
    for i, factor in enumerate(factors):
        n = round(len(prints) * factor)
        lengths[i] = n
        out[i, :n] = prints[np.minimum(np.round(np.arange(n) / factor).astype(np.int64), len(prints) - 1)]
    return out, lengths


def _fft_size(n: int) -> int:
    """The smallest 5-smooth integer >= n (fast for the FFT)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def similarity(new: bytes, stored: bytes) -> float:
    """Best agreement (0 = unrelated, 1 = identical) of two fingerprints over all time offsets that
    overlap by at least `MIN_OVERLAP` frames, speed factors within about +-10 % and both directions
    of time; 0.0 if no offset overlaps enough."""
    x, y = unpack(new), unpack(stored)
    if min(len(x), len(y)) < MIN_OVERLAP:
        return 0.0
    xs, nx = _stretched(x, FINE, round(len(x) * FINE[-1]))
    ys, ny = _stretched(y, COARSE, round(len(y) * COARSE[-1]))
    ys = np.matmul(ys, _MAPS)
    size = _fft_size(xs.shape[1] + ys.shape[1])
    spectra_x = np.fft.rfft(xs, size, axis=1).transpose(1, 0, 2)  # (freq, fine, band)
    spectra_y = np.fft.rfft(ys, size, axis=1).transpose(1, 2, 0)  # (freq, band, coarse)
    # Backwards is y[n-1-t] with every bit flipped (energy changes change sign); its spectrum
    # follows from y's: -conj(Y) * exp(-2 pi i f (n-1) / size).
    turn = np.exp(-2j * np.pi * np.outer(np.arange(size // 2 + 1), ny - 1) / size).astype(np.complex64)
    both = np.concatenate([np.conj(spectra_y), -spectra_y * np.conj(turn)[:, None, :]], axis=2)
    products = np.matmul(spectra_x, both).transpose(1, 2, 0)  # (fine, forward + backward coarse, freq)
    corr = np.fft.irfft(products, size, axis=-1)
    corr = np.maximum(corr[:, : len(COARSE)], corr[:, len(COARSE) :])  # (fine, coarse, lag)
    lags = np.arange(size, dtype=np.float32)
    lags = np.where(lags < size // 2, lags, lags - size)  # x[t + lag] against y[t]
    overlap = np.minimum(nx[:, None, None], ny[None, :, None] + lags) - np.maximum(0, lags)
    # Enough frames of both prints, as they were before stretching.
    need = MIN_OVERLAP * np.maximum(1.0, FINE)[:, None, None] * np.maximum(1.0, COARSE)[None, :, None]
    enough = overlap >= need
    if not enough.any():
        return 0.0
    # Bits moved between bands are fractions: scale by the stretched print's own size.
    scale = np.sqrt(np.sum(ys**2, axis=(1, 2)) / (ny * (BANDS - 1))) * (BANDS - 1)
    agreement = corr[enough] / (overlap[enough] * np.broadcast_to(scale[None, :, None], corr.shape)[enough])
    return max(float(np.max(agreement)), 0.0)
