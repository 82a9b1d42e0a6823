"""Decode client audio of any supported encoding to float32 samples at the file's own rate.

Containers and codecs go through PyAV (FFmpeg), with the demuxer chosen from the stated encoding
and from the container's own signature in the first bytes (clients name formats loosely: MediaInfo's
"Wave" or "MPEG Audio", a vague or wrong name), never from FFmpeg's probing, so random bytes labelled
WAV are refused instead of being probed into some other format. Raw LINEAR16 / MULAW / ALAW are
decoded here from `sampleRate`.
Decoding runs under a sample budget (the duration limit) and a wall-clock budget, so a
decompression bomb or a header claiming hours of audio costs at most those budgets.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from service.errors import (
    AudioTooLong,
    EmptyAudio,
    InvalidBase64,
    MissingSampleRate,
    TooManyChannels,
    UndecodableAudio,
    UnsupportedEncoding,
    shown,
)

log = logging.getLogger(__name__)

MIN_RATE = 4_000
MAX_RATE = 384_000
# Above this a file is brought down to it while decoding (the model hears 16 kHz).
MAX_DECODED_RATE = 48_000
MAX_CHANNELS = 8

# Stated encoding -> FFmpeg demuxers to try, in order.
CONTAINERS: dict[str, tuple[str, ...]] = {
    "FLAC": ("flac", "ogg"),
    "WAV": ("wav",),
    "WAVE": ("wav",),
    "MP3": ("mp3",),
    "OGG": ("ogg",),
    "OGG_OPUS": ("ogg",),
    "OPUS": ("ogg",),
    "OGG_VORBIS": ("ogg",),
    "VORBIS": ("ogg",),
    "WEBM": ("matroska",),
    "WEBM_OPUS": ("matroska",),
    "MKV": ("matroska",),
    "M4A": ("mov",),
    "MP4": ("mov",),
    "AAC": ("mov", "aac"),
    "M4A_AAC": ("mov", "aac"),
    "AMR": ("amr",),
    "AMR_NB": ("amr",),
    "AMR_WB": ("amr",),
}
RAW = ("LINEAR16", "PCM_S16LE", "PCM_S16BE", "MULAW", "ULAW", "ALAW")
SUPPORTED = tuple(sorted({*CONTAINERS, *RAW}))
# Other names clients send for the same things: MediaInfo's formats and codecs, spellings of G.711.
ALIASES = {
    "MPEG_AUDIO": "MP3",
    "MPA1L3": "MP3",
    "MPA2L3": "MP3",
    "MPEG_4": "M4A",
    "MPEG4": "M4A",
    "ADTS": "AAC",
    "MATROSKA": "MKV",
    "PCM": "LINEAR16",
    "U_LAW": "MULAW",
    "MU_LAW": "MULAW",
    "A_LAW": "ALAW",
}


def sniff(data: bytes, *, weak: bool = False) -> str | None:
    """The demuxer a container's signature names, if the bytes start with one. `weak` also takes
    bare MP3 and ADTS frame headers, which 11-12 bits of anything (raw G.711 silence) can mimic."""
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:5] == b"#!AMR":
        return "amr"
    if head[:3] == b"ID3":
        return "mp3"
    if weak and len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:
            return "aac"
        if head[1] & 0xE0 == 0xE0:
            return "mp3"
    return None


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, shape (channels, n), in [-1, 1]
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[1] / self.sample_rate)


def normalise_encoding(encoding: str) -> str:
    if not encoding.strip():
        # Raised only where the bytes do not say what they are either (see `decode`).
        raise UnsupportedEncoding(
            f"No encoding given, and the audio's first bytes name no container; give one of: "
            f"{', '.join(SUPPORTED)}"
        )
    name = encoding.strip().upper().replace("/", "_").replace("-", "_").replace(" ", "_")
    name = ALIASES.get(name, name)
    if name not in CONTAINERS and name not in RAW:
        raise UnsupportedEncoding(
            f"Unsupported encoding {shown(encoding)!r}; supported: {', '.join(SUPPORTED)}"
        )
    return name


def b64decode(content: str) -> bytes:
    """Strict base64, except that line breaks and spaces (as `base64` tools wrap it) are allowed."""
    try:
        data = base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidBase64() from exc
    if not data:
        raise EmptyAudio()
    return data


def decode(
    data: bytes,
    encoding: str,
    sample_rate: int | None,
    *,
    max_seconds: float,
    timeout_s: float,
) -> DecodedAudio:
    """Decode `data`; `sample_rate` is required for raw encodings and ignored for containers."""
    name, guess = _named(data, encoding)
    if name is None:
        return _decode_any(data, encoding, [guess], max_seconds, timeout_s, unknown_name=True)
    # A raw name on a container (LINEAR16 with a WAV header is common: Google's API allows it):
    # the container's header wins.
    found = sniff(data)
    if name in RAW and found is None:
        return _decode_raw(data, name, sample_rate, max_seconds)
    demuxers = [] if name in RAW else list(CONTAINERS[name])
    if found is not None and found not in demuxers:
        demuxers.append(found)
    if name not in RAW:
        # A known but wrong name on bare MP3 or ADTS frames (no signature): their frame header, as
        # for an unknown name, tried last. Not for raw names, whose samples can mimic it.
        weak = sniff(data, weak=True)
        if weak is not None and weak not in demuxers:
            demuxers.append(weak)
    return _decode_any(data, name, demuxers, max_seconds, timeout_s)


def _decode_any(
    data: bytes,
    name: str,
    demuxers: list[str],
    max_seconds: float,
    timeout_s: float,
    *,
    unknown_name: bool = False,
) -> DecodedAudio:
    errors: list[str] = []
    for demuxer in demuxers:
        try:
            return _decode_container(data, demuxer, max_seconds, timeout_s)
        except (av.FFmpegError, ValueError, IndexError, OverflowError, MemoryError) as exc:
            errors.append(f"{demuxer}: {exc}")
    # FFmpeg's own words stay in the log: they describe its internals, not the client's mistake.
    log.info("undecodable audio", extra={"encoding": shown(name), "detail": "; ".join(errors)[:1000]})
    if unknown_name:
        raise UnsupportedEncoding(
            f"Unsupported encoding {shown(name)!r}, and the audio is not the {demuxers[0]} its first bytes "
            f"suggest; supported: {', '.join(SUPPORTED)}"
        )
    raise UndecodableAudio(f"Audio could not be decoded as {name}")


def precheck(data: bytes, encoding: str, sample_rate: int | None) -> None:
    """Raise what `decode` would for what the bytes' first few tell without decoding them: no audio,
    a name nothing supports on bytes that name no container, raw audio without a usable rate. For
    work queued now and decoded later (async jobs), so that such input is a 4xx at once."""
    name, _ = _named(data, encoding)
    if name in RAW and sniff(data) is None:
        _raw_rate(name, sample_rate)


def _named(data: bytes, encoding: str) -> tuple[str | None, str]:
    """(the encoding's canonical name, "") or, for a name we do not know on bytes that say what
    they are (believe the bytes), (None, the demuxer their first bytes name). EmptyAudio, or
    UnsupportedEncoding when neither the name nor the bytes tell."""
    if not data:
        raise EmptyAudio()
    try:
        return normalise_encoding(encoding), ""
    except UnsupportedEncoding:
        guess = sniff(data, weak=True)
        if guess is None:
            raise
        return None, guess


def _raw_rate(name: str, sample_rate: int | None) -> int:
    if sample_rate is None:
        raise MissingSampleRate(f"sampleRate is required for encoding {name}")
    _check_rate(sample_rate)
    return sample_rate


def _decode_raw(data: bytes, name: str, sample_rate: int | None, max_seconds: float) -> DecodedAudio:
    sample_rate = _raw_rate(name, sample_rate)
    if name in ("LINEAR16", "PCM_S16LE", "PCM_S16BE"):
        if len(data) % 2:
            raise UndecodableAudio(f"{name} audio must have an even number of bytes")
        order = ">i2" if name == "PCM_S16BE" else "<i2"  # big-endian: RTP's and audio/L16's order
        samples = np.frombuffer(data, dtype=order).astype(np.float32) / 32768.0
    elif name in ("MULAW", "ULAW"):
        samples = _ULAW[np.frombuffer(data, dtype=np.uint8)]
    else:
        samples = _ALAW[np.frombuffer(data, dtype=np.uint8)]
    if len(samples) > max_seconds * sample_rate:
        raise AudioTooLong(f"Audio is longer than {max_seconds:g} s")
    return DecodedAudio(samples[None, :].astype(np.float32, copy=False), sample_rate)


def _check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise UndecodableAudio(f"Sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")


def _frames(
    container: av.container.InputContainer, stream: av.AudioStream, *, cut_short_ok: bool
) -> Iterator[av.AudioFrame]:
    """The stream's frames. A file whose own signature names this demuxer and that breaks off after
    some frames (an upload cut short, a damaged last frame) gives the frames before the break, as
    FFmpeg's MP3, WAV and Ogg readers do by themselves; any other decoding error is raised."""
    decoded = False
    try:
        for frame in container.decode(stream):
            decoded = True
            yield frame
    except av.FFmpegError as exc:
        if not (cut_short_ok and decoded):
            raise
        log.info("audio cut short: kept the frames before the break", extra={"detail": str(exc)[:200]})


def _decode_container(data: bytes, demuxer: str, max_seconds: float, timeout_s: float) -> DecodedAudio:
    deadline = time.monotonic() + timeout_s
    chunks: list[np.ndarray] = []
    total = 0
    rate = 0
    with av.open(io.BytesIO(data), mode="r", format=demuxer, timeout=timeout_s) as container:
        streams = container.streams.audio
        if not streams:
            raise ValueError("no audio stream")
        stream = streams[0]
        resampler: av.AudioResampler | None = None
        channels = 0
        for frame in _frames(container, stream, cut_short_ok=sniff(data, weak=True) == demuxer):
            if resampler is None:
                _check_rate(int(frame.sample_rate))
                if frame.layout.nb_channels > MAX_CHANNELS:
                    # Refused rather than cut: a dropped channel's voice would go unheard by the
                    # checks (two voices, speech) while the rest is enrolled.
                    raise TooManyChannels(
                        f"Audio has {frame.layout.nb_channels} channels; at most {MAX_CHANNELS} are accepted"
                    )
                channels = max(1, frame.layout.nb_channels)
                # Packed float in the file's layout, at its rate up to MAX_DECODED_RATE: a few bytes of
                # 8-channel 384 kHz silence would otherwise decode to gigabytes. Mixing and the
                # 16 kHz conversion come later. Not planar: PyAV's AudioFrame.planes reads past
                # AVFrame.data[] for 8+ planes and segfaults, so an 8-channel upload would kill the process.
                rate = min(int(frame.sample_rate), MAX_DECODED_RATE)
                resampler = av.AudioResampler(format="flt", layout=frame.layout.name, rate=rate)
            for out in resampler.resample(frame):
                block = out.to_ndarray().reshape(out.samples, -1).T[:channels]
                chunks.append(block)
                total += block.shape[1]
            if total > max_seconds * rate:
                raise AudioTooLong(f"Audio is longer than {max_seconds:g} s")
            if time.monotonic() > deadline:
                raise UndecodableAudio(f"Decoding took longer than {timeout_s:g} s")
        if resampler is not None:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(out.samples, -1).T[:channels])
    if not chunks:
        raise ValueError("no audio frames")
    samples = _joined(chunks)
    if samples.shape[1] == 0:
        raise ValueError("no audio samples")
    # Float decoders (MP3, AAC, Opus, AMR) can overshoot far past full scale on corrupt input.
    # In place: a 5-minute clip is up to 100+ MB here, and each copy would be as much again.
    np.nan_to_num(samples, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(samples, -1.0, 1.0, out=samples)
    return DecodedAudio(samples, rate)


def _joined(chunks: list[np.ndarray]) -> np.ndarray:
    """The chunks ``(channels, n_i)`` side by side, emptying the list as they are copied: at most
    one chunk is held twice (np.concatenate holds all of them twice, 0.9 GB for 5 minutes of
    8-channel 48 kHz audio)."""
    joined = np.empty((chunks[0].shape[0], sum(c.shape[1] for c in chunks)), dtype=np.float32)
    at = 0
    chunks.reverse()
    while chunks:
        chunk = chunks.pop()
        joined[:, at : at + chunk.shape[1]] = chunk
        at += chunk.shape[1]
    return joined


def _ulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign, -magnitude, magnitude) / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return (np.where(sign, magnitude, -magnitude) / 32768.0).astype(np.float32)


_ULAW = _ulaw_table()
_ALAW = _alaw_table()
