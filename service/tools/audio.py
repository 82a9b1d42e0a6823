"""What a client does with an audio file before sending it: name its encoding, read its sample rate,
and re-encode it to FLAC (optionally resampled) with FFmpeg through PyAV."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av

# The file extensions the tools send, and the `encoding` the service is told.
ENCODINGS: dict[str, str] = {
    ".flac": "FLAC",
    ".wav": "WAV",
    ".mp3": "MP3",
    ".ogg": "OGG",
    ".opus": "OGG_OPUS",
    ".webm": "WEBM",
    ".m4a": "M4A",
    ".amr": "AMR",
}


def encoding_for(path: Path) -> str | None:
    """The service `encoding` for a file, from its extension; None for extensions the tools skip."""
    return ENCODINGS.get(path.suffix.lower())


def header_sample_rate(path: Path) -> int | None:
    """The sample rate in the file's header (FFmpeg probes only the start), None if unreadable."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = container.streams.audio
            rate = streams[0].codec_context.sample_rate if streams else 0
    except (av.FFmpegError, OSError, ValueError):
        return None
    return int(rate) if rate else None


class AudioReadError(ValueError):
    """A file the client cannot read or decode."""


@dataclass(frozen=True)
class FlacClip:
    """A clip as it is sent: FLAC bytes and their sample rate (Hz)."""

    data: bytes
    sample_rate: int


def flac_clip(path: Path, resample_to: int | None = None) -> FlacClip:
    """The clip as FLAC at its own sample rate, or resampled to `resample_to` Hz.

    A FLAC file sent at its own rate goes as it is stored. Anything else is decoded and re-encoded
    as 16-bit FLAC (mono stays mono, more channels become stereo), resampled with FFmpeg's
    swresample (a windowed-sinc filter, so no aliasing from a plain decimation).
    Raises `AudioReadError` for a file that cannot be read or decoded.
    """
    try:
        return _flac_clip(path, resample_to)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioReadError(f"{path}: {exc}") from exc


def _flac_clip(path: Path, resample_to: int | None) -> FlacClip:
    if resample_to is None and path.suffix.lower() == ".flac":
        rate = header_sample_rate(path)
        if rate is not None:
            return FlacClip(data=path.read_bytes(), sample_rate=rate)
    with av.open(str(path), metadata_errors="ignore") as source:
        if not source.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        in_stream = source.streams.audio[0]
        rate = resample_to or in_stream.codec_context.sample_rate
        layout = "mono" if in_stream.codec_context.channels == 1 else "stereo"
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="flac") as sink:
            out_stream = sink.add_stream("flac", rate=rate, layout=layout)
            assert isinstance(out_stream, av.AudioStream)
            resampler = av.AudioResampler(
                format="s16", layout=layout, rate=rate, frame_size=out_stream.codec_context.frame_size or None
            )
            for frame in [*source.decode(in_stream), None]:
                for chunk in resampler.resample(frame):
                    chunk.pts = None
                    sink.mux(out_stream.encode(chunk))
            sink.mux(out_stream.encode(None))
    return FlacClip(data=buffer.getvalue(), sample_rate=rate)
