"""Realtime streams for tests and the bench: a conversation joined from real clips, cut into chunks,
streamed over gRPC (the service's own generated stub: the wire format the official client uses) or
the native WebSocket."""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from websockets.sync.client import connect

from devtools.clips import load_clip
from service.realtime import deepaffects_realtime_pb2 as pb
from service.realtime import deepaffects_realtime_pb2_grpc as pb_grpc

# Two readers to enroll (clips of theirs not used here), and held-out clips of them and of a
# stranger to stream: the tests' and the bench's conversation.
ENROLL = {
    "alice": (  # ls-367, F
        "librispeech/test-other/367/367-130732-0002.flac",
        "librispeech/test-other/367/367-130732-0003.flac",
        "librispeech/test-other/367/367-130732-0005.flac",
    ),
    "bob": (  # ls-2609, M
        "librispeech/test-other/2609/2609-156975-0002.flac",
        "librispeech/test-other/2609/2609-156975-0004.flac",
        "librispeech/test-other/2609/2609-156975-0006.flac",
    ),
}
TURNS = (
    ("alice", "librispeech/test-other/367/367-130732-0007.flac"),
    ("unknown", "librispeech/test-other/3080/3080-5032-0006.flac"),
    ("bob", "librispeech/test-other/2609/2609-156975-0007.flac"),
)
RATE = 16_000


@dataclass(frozen=True)
class Conversation:
    samples: np.ndarray  # int16 mono at RATE
    speakers: list[str]  # who speaks in each `turn_s` stretch, in order
    turn_s: float

    def chunks(self, seconds: float) -> list[np.ndarray]:
        step = int(seconds * RATE)
        return [self.samples[i : i + step] for i in range(0, len(self.samples), step)]

    def speaker_at(self, t: float) -> str:
        return self.speakers[min(int(t // self.turn_s), len(self.speakers) - 1)]


def conversation(turn_s: float = 6.0, turns: Sequence[tuple[str, str]] = TURNS) -> Conversation:
    """The first `turn_s` seconds of each turn's clip, joined (16 kHz LibriSpeech)."""
    parts = []
    for _, path in turns:
        clip = load_clip(path)
        assert clip.sample_rate == RATE and clip.duration_s >= turn_s, path
        parts.append(clip.samples[: int(turn_s * RATE)])
    return Conversation(np.concatenate(parts).astype(np.int16), [s for s, _ in turns], turn_s)


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return out.getvalue()


def wav_chunk(samples: np.ndarray, offset: float) -> pb.SegmentChunk:
    """A chunk as the official client's `chunk_generator_from_file` makes it: base64 WAV."""
    import base64

    return pb.SegmentChunk(
        content=base64.b64encode(wav_bytes(samples)).decode(),
        encoding="wav",
        languageCode="en-US",
        sampleRate=RATE,
        duration=len(samples) / RATE,
        segmentOffset=offset,
    )


def grpc_stream(
    target: str,
    key: str,
    chunks: Iterator[pb.SegmentChunk] | Sequence[pb.SegmentChunk],
    speaker_ids: str = "",
    timeout: float = 300.0,
) -> Iterator[pb.SegmentSpeaker]:
    """`IdentifySpeaker` with the official client's metadata; the answers as they come."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DeepAffectsRealtimeStub(channel)  # type: ignore[no-untyped-call]
        metadata = [
            ("apikey", key),
            ("speakerids", speaker_ids),
            ("encoding", "wav"),
            ("samplerate", str(RATE)),
            ("languagecode", "en-US"),
        ]
        yield from stub.IdentifySpeaker(iter(chunks), timeout, metadata=metadata)


def websocket_url(http_url: str, key: str, **query: str) -> str:
    params = "&".join(f"{k}={v}" for k, v in {"apikey": key, **query}.items())
    return http_url.replace("http://", "ws://", 1) + f"/v1/identify/stream?{params}"


def websocket_stream(url: str, frames: Sequence[bytes], timeout: float = 300.0) -> list[dict[str, Any]]:
    """Each frame sent in turn, its JSON answer read before the next."""
    answers = []
    with connect(url, open_timeout=timeout, close_timeout=5) as ws:
        for frame in frames:
            ws.send(frame)
            answers.append(json.loads(ws.recv(timeout=timeout)))
    return answers


def main_speaker(segments: Sequence[tuple[str, float, float]]) -> str | None:
    """The speaker with the most time among a chunk's segments ``(speaker, start, end)``."""
    time: dict[str, float] = {}
    for speaker, start, end in segments:
        time[speaker] = time.get(speaker, 0.0) + end - start
    return max(time, key=lambda s: time[s]) if time else None
