"""Channel conditions built from clean speech with FFmpeg (PyAV): the codecs, noise and rooms a
tenant's audio may come through. Each condition turns a mono float clip into what a client would
send after that channel, decoded back to PCM at the channel's rate (a lossless copy of a lossy
signal), so the same rendered folder can be embedded in-process or sent over HTTP as FLAC.

Every condition is deterministic for a given clip (its seed comes from the clip's path).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio.functional as AF

from service.audio import MODEL_RATE
from service.audio.band import band_pass
from service.tools.inputs import ManifestRow

TELEPHONE_RATE = 8_000


def encode(samples: np.ndarray, rate: int, fmt: str, codec: str, bit_rate: int = 0) -> bytes:
    """Mono float samples in [-1, 1] -> a file in container `fmt` encoded with `codec`."""
    pcm = np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        if not isinstance(stream, av.AudioStream):
            raise TypeError(f"{codec} is not an audio codec")
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def decode_mono(data: bytes) -> tuple[np.ndarray, int]:
    """A file's first audio stream as mono float32 samples and its rate."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32), rate


def resample(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    if rate == new_rate:
        return samples.astype(np.float32)
    wave = AF.resample(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), rate, new_rate)
    return np.asarray(wave.numpy())


def _level(samples: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """Scale so the peak sits at `peak`: codecs see a sane level, nothing clips."""
    top = float(np.max(np.abs(samples))) if samples.size else 0.0
    return samples * (peak / top) if top > 0 else samples


def _narrowband(samples: np.ndarray, rate: int) -> np.ndarray:
    return _level(band_pass(resample(samples, rate, TELEPHONE_RATE), TELEPHONE_RATE))


def _codec(fmt: str, codec: str, out_rate: int, bit_rate: int = 0, band: bool = False) -> Channel:
    def apply(samples: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        wave = _narrowband(samples, rate) if band else _level(resample(samples, rate, out_rate))
        return decode_mono(encode(wave, out_rate, fmt, codec, bit_rate))

    return apply


def _noisy(noise: np.ndarray, low_db: float, high_db: float) -> Channel:
    """Real noise (`noise`, at 16 kHz) added at an SNR drawn per clip in [low_db, high_db], over
    the clip's active part (frames within 30 dB of its loudest)."""

    def apply(samples: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        wave = resample(samples, rate, MODEL_RATE)
        start = int(rng.integers(0, max(1, len(noise) - len(wave))))
        piece = np.resize(noise[start:], len(wave)).astype(np.float64)
        snr_db = float(rng.uniform(low_db, high_db))
        power = _active_power(wave)
        gain = math.sqrt(power / (10 ** (snr_db / 10)) / max(float(np.mean(piece**2)), 1e-12))
        return _level((wave + gain * piece).astype(np.float32), 0.7), MODEL_RATE

    return apply


def _active_power(wave: np.ndarray, frame: int = 320) -> float:
    usable = len(wave) // frame * frame
    if usable == 0:
        return float(np.mean(wave.astype(np.float64) ** 2))
    energy = (wave[:usable].astype(np.float64).reshape(-1, frame) ** 2).mean(axis=1)
    return float(energy[energy >= energy.max() * 1e-3].mean())


def _reverberant(rt60_low: float, rt60_high: float) -> Channel:
    """A synthetic room: direct path plus exponentially decaying diffuse noise with RT60 drawn per
    clip in [rt60_low, rt60_high] s, after a 5 ms pre-delay."""

    def apply(samples: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        wave = resample(samples, rate, MODEL_RATE)
        rt60 = float(rng.uniform(rt60_low, rt60_high))
        n = int(rt60 * MODEL_RATE)
        t = np.arange(n) / MODEL_RATE
        tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
        tail[: int(0.005 * MODEL_RATE)] = 0.0
        rir = tail / np.sqrt(np.sum(tail**2)) * 0.8  # diffuse energy a little below the direct path
        rir[0] = 1.0
        size = len(wave) + len(rir) - 1
        wet = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(rir, size), size)[: len(wave)]
        return _level(wet.astype(np.float32), 0.7), MODEL_RATE

    return apply


Channel = Callable[[np.ndarray, int, np.random.Generator], tuple[np.ndarray, int]]


def channels(noise: np.ndarray) -> dict[str, Channel]:
    """Every channel by name. `noise`: real background noise at 16 kHz (see `real_noise`)."""
    return {
        "clean": lambda s, r, g: (resample(s, r, MODEL_RATE), MODEL_RATE),
        "mulaw": _codec("wav", "pcm_mulaw", TELEPHONE_RATE, band=True),
        "alaw": _codec("wav", "pcm_alaw", TELEPHONE_RATE, band=True),
        "amrnb": _codec("amr", "libopencore_amrnb", TELEPHONE_RATE, 12_200, band=True),
        "opus": _codec("ogg", "libopus", TELEPHONE_RATE, 10_000, band=True),
        "mp3": _codec("mp3", "libmp3lame", 16_000, 24_000),
        "noise": _noisy(noise, 5.0, 20.0),
        "reverb": _reverberant(0.3, 0.8),
    }


@dataclass(frozen=True)
class Condition:
    """How a tenant's speakers are enrolled and how they are then heard: one channel each."""

    name: str
    enroll: str
    test: str
    # False: reported only, never part of the set that chooses the thresholds and priors.
    calibrates: bool = True


CONDITIONS: tuple[Condition, ...] = (
    *(Condition(name, name, name) for name in ("clean", "mulaw", "alaw", "amrnb", "opus", "mp3")),
    Condition("noise", "noise", "noise"),
    Condition("reverb", "reverb", "reverb"),
    # Enrolled in the office at 16 kHz, identified over the phone: calls are scored against the
    # narrowband twins the service stores with each 16 kHz sample ("twin", `devtools.study`).
    Condition("mixed", "twin", "mulaw"),
    Condition("mixed-amrnb", "twin", "amrnb", calibrates=False),
    Condition("mixed-opus", "twin", "opus", calibrates=False),
)


def seed_of(path: str) -> int:
    return int(hashlib.sha256(path.encode()).hexdigest()[:8], 16)


def real_noise(
    clips: Sequence[ManifestRow], regions: Callable[[np.ndarray], list[tuple[float, float]]]
) -> np.ndarray:
    """The non-speech parts of real recordings (`regions` finds speech in a 16 kHz wave), joined,
    at 16 kHz: line hiss, handset and room noise of real calls rather than synthetic white noise."""
    parts: list[np.ndarray] = []
    for clip in clips:
        samples, rate = decode_mono(clip.path.read_bytes())
        wave = resample(samples, rate, MODEL_RATE)
        keep = np.ones(len(wave), dtype=bool)
        for start, end in regions(wave):
            keep[max(0, int((start - 0.2) * MODEL_RATE)) : int((end + 0.2) * MODEL_RATE)] = False
        gap = wave[keep]
        if len(gap) > MODEL_RATE // 4:
            parts.append(gap / max(float(np.sqrt(np.mean(gap.astype(np.float64) ** 2))), 1e-6))
    if not parts:
        raise ValueError("no non-speech audio found in the noise clips")
    return np.concatenate(parts).astype(np.float32)


def render(clips: Sequence[ManifestRow], channel: str, apply: Channel, out_dir: Path) -> Path:
    """Write each clip through `apply` as FLAC under `out_dir` (same relative paths) with a
    manifest.csv of the same columns; clips already rendered are kept. Returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    rows = []
    for clip in clips:
        relative = Path(clip.name).with_suffix(".flac")
        target = out_dir / relative
        if not target.exists():
            samples, rate = decode_mono(clip.path.read_bytes())
            wave, out_rate = apply(samples, rate, np.random.default_rng(seed_of(f"{channel}:{clip.name}")))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encode(np.clip(wave, -1.0, 1.0), out_rate, "flac", "flac"))
        rows.append({"path": str(relative), "speaker": clip.speaker, **clip.extra})
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
