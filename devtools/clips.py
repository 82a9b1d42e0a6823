"""Real eval-speech clips and encoders built on PyAV (FFmpeg), for tests and scripts alike.

The encoders here are independent of `service.audio.decode`: containers and codecs go through
FFmpeg's muxers and encoders, and G.711 bytes come from FFmpeg's pcm_mulaw / pcm_alaw encoders,
so a test that decodes them checks the service against a second implementation.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, cached_property
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from devtools.sets import EVAL_SPEECH, manifest_rows

# Short, clean LibriSpeech utterances used throughout the audio tests (path relative to EVAL_SPEECH).
SHORT_CLIP = "librispeech/test-clean/61/61-70968-0002.flac"  # 2.97 s
MEDIUM_CLIP = "librispeech/test-clean/61/61-70968-0000.flac"
VCTK_CLIP = "vctk/p225/p225_003.wav"  # 6.0 s, WAV
# Two LibriSpeech readers with two clips each to enroll, and a third clip of the first (9.8 s) that
# is not enrolled: a small population for identify under load.
TWO_READERS = {
    "alice": (
        "librispeech/test-other/367/367-130732-0002.flac",
        "librispeech/test-other/367/367-130732-0003.flac",
    ),
    "bob": (
        "librispeech/test-other/2609/2609-156975-0002.flac",
        "librispeech/test-other/2609/2609-156975-0006.flac",
    ),
}
ALICE_UNENROLLED = "librispeech/test-other/367/367-130732-0007.flac"


@dataclass(frozen=True)
class Clip:
    path: Path
    samples: np.ndarray  # int16, 1-D (mono)
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def as_float(self) -> np.ndarray:
        return self.samples.astype(np.float32) / 32768.0


@dataclass(frozen=True)
class SetClip:
    """One line of an evaluation set's manifest: which file, whose voice, how long."""

    path: str  # relative to the set's folder, as the manifest writes it
    speaker: str
    duration_s: float
    folder: Path = EVAL_SPEECH

    @property
    def file(self) -> Path:
        return self.folder / self.path

    @property
    def encoding(self) -> str:
        """The service `encoding` of the file as stored (the sets hold FLAC and WAV)."""
        return "WAV" if self.path.endswith(".wav") else "FLAC"

    @property
    def session(self) -> str:
        """The recording session: a LibriSpeech chapter (``reader-chapter-utterance``); one per
        VCTK speaker."""
        parts = Path(self.path).stem.split("-")
        return f"{self.speaker}/{parts[1]}" if len(parts) == 3 else self.speaker

    @cached_property
    def audio_fields(self) -> dict[str, str]:
        """The audio of a request body for this file as stored: base64 `content` and `encoding`."""
        return {"content": base64.b64encode(self.file.read_bytes()).decode(), "encoding": self.encoding}


def set_clips(folder: Path = EVAL_SPEECH, manifest: str = "manifest.csv") -> list[SetClip]:
    """Every clip of the set in `folder` (its `manifest`: path, speaker, duration_s), in order."""
    return [
        SetClip(r.name, r.speaker, float(r.extra["duration_s"]), folder)
        for r in manifest_rows(folder, ("path", "speaker", "duration_s"), manifest)
    ]


def eval_speech_available() -> bool:
    return (EVAL_SPEECH / "manifest.csv").is_file()


@cache
def manifest() -> tuple[SetClip, ...]:
    """Every eval-speech clip, read once per process."""
    return tuple(set_clips())


@cache
def load_clip(relative_path: str) -> Clip:
    """An eval-speech clip as int16 mono numpy (the files are 16-bit PCM)."""
    path = EVAL_SPEECH / relative_path
    samples, rate = sf.read(path, dtype="int16", always_2d=True)
    samples.setflags(write=False)
    return Clip(path=path, samples=samples[:, 0].copy(), sample_rate=int(rate))


def clip_bytes(relative_path: str) -> bytes:
    """The clip's file exactly as stored (FLAC or WAV)."""
    return (EVAL_SPEECH / relative_path).read_bytes()


# --- encoders -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How to produce one encoding with FFmpeg: muxer, encoder, output rate, channels, options."""

    fmt: str
    codec: str
    rate: int
    channels: int = 1
    options: tuple[tuple[str, str], ...] = ()


RECIPES: dict[str, Recipe] = {
    "flac": Recipe("flac", "flac", 16_000),
    "flac8k": Recipe("flac", "flac", 8_000),
    "ogg_flac": Recipe("ogg", "flac", 16_000),
    "wav": Recipe("wav", "pcm_s16le", 16_000),
    "wav_stereo": Recipe("wav", "pcm_s16le", 16_000, channels=2),
    "mp3": Recipe("mp3", "libmp3lame", 16_000),
    "mp3_stereo": Recipe("mp3", "libmp3lame", 44_100, channels=2),
    "ogg_opus": Recipe("ogg", "libopus", 48_000),
    # FFmpeg's native Vorbis encoder is "experimental" and only encodes exactly two channels.
    "ogg_vorbis": Recipe("ogg", "vorbis", 16_000, channels=2, options=(("strict", "experimental"),)),
    "webm_opus": Recipe("webm", "libopus", 48_000),
    "mkv_flac": Recipe("matroska", "flac", 16_000),
    "m4a_aac": Recipe("ipod", "aac", 16_000),
    "mp4_aac": Recipe("mp4", "aac", 22_050),
    "adts_aac": Recipe("adts", "aac", 16_000),
    "amr_nb": Recipe("amr", "libopencore_amrnb", 8_000),
    "mulaw": Recipe("mulaw", "pcm_mulaw", 8_000),
    "alaw": Recipe("alaw", "pcm_alaw", 8_000),
}


def encode(
    samples: np.ndarray,
    source_rate: int,
    fmt: str,
    codec: str,
    rate: int,
    *,
    channels: int = 1,
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode int16 `samples` ((n,) or (channels, n)) at `source_rate` into container `fmt` with
    encoder `codec` at `rate` Hz, resampling with FFmpeg's swresample where the rates differ.
    A mono input given for a stereo encoding is copied to both channels."""
    wave = np.asarray(samples, dtype=np.int16)
    if wave.ndim == 1:
        wave = wave[None, :]
    if wave.shape[0] != channels:
        wave = np.repeat(wave[:1], channels, axis=0)
    layout = "mono" if channels == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout, options=dict(options or {}))
        assert isinstance(stream, av.AudioStream)
        ctx = stream.codec_context
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(wave.T.reshape(1, -1)), format="s16", layout=layout
        )
        frame.sample_rate = source_rate
        frame.pts = 0
        frame.time_base = Fraction(1, source_rate)
        resampler = av.AudioResampler(
            format=ctx.format.name, layout=layout, rate=rate, frame_size=ctx.frame_size or None
        )
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def encode_recipe(samples: np.ndarray, source_rate: int, recipe: str | Recipe) -> bytes:
    r = RECIPES[recipe] if isinstance(recipe, str) else recipe
    return encode(samples, source_rate, r.fmt, r.codec, r.rate, channels=r.channels, options=dict(r.options))


def g711_bytes(samples: np.ndarray, source_rate: int, law: str, rate: int = 8_000) -> bytes:
    """Raw G.711 bytes (no header) from FFmpeg's encoder; `law` is 'mulaw' or 'alaw'."""
    if law not in ("mulaw", "alaw"):
        raise ValueError(law)
    return encode(samples, source_rate, law, f"pcm_{law}", rate)


def linear16_bytes(samples: np.ndarray) -> bytes:
    """Headerless little-endian 16-bit PCM."""
    return np.asarray(samples, dtype="<i2").tobytes()


def ffmpeg_decode_raw(data: bytes, demuxer: str, rate: int) -> np.ndarray:
    """Decode headerless bytes with FFmpeg's raw demuxer of that name (e.g. 'mulaw', 'alaw').
    Returns float32 mono in [-1, 1) (the decoders' int16 output / 32768)."""
    chunks: list[np.ndarray] = []
    with av.open(io.BytesIO(data), mode="r", format=demuxer, options={"sample_rate": str(rate)}) as c:
        for frame in c.decode(c.streams.audio[0]):
            if frame.format.name != "s16":
                raise AssertionError(f"expected s16 frames from {demuxer}, got {frame.format.name}")
            chunks.append(frame.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def silence_flac(seconds: float, rate: int = 8_000) -> bytes:
    """Digital silence as FLAC: tiny on disk, long when decoded."""
    return encode(np.zeros(int(seconds * rate), dtype=np.int16), rate, "flac", "flac", rate)
