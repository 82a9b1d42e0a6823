"""One realtime identification stream, whatever carries it (gRPC or the native WebSocket).

A stream is opened once (key -> tenant, the candidate speakers checked, a slot of the key's
stream limit taken) and then answers chunk after chunk. Each chunk is decoded on its own (bad
audio is an error for that chunk alone, and leaves the stream as it was), then scored together
with the last `context_seconds` of the stream's audio before it: a speaker turn that spans chunks
is one stretch of that window, scored as a whole by the same who-speaks-when use case as the
compatible identify (`IdentificationService.segments`, its decision rule included). The answer is
the stretches that reach into the chunk, in stream time, each with its decision score. The
vectors embedded with the chunk before are kept (`SpanVectors`): a window of the very same samples
is not embedded again, nor a stretch wholly in the context (it was answered already).

Blocking: call `open` and `chunk` from a worker thread (the model work goes through the process's
compute thread like every HTTP request's).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from service.audio import MODEL_RATE
from service.audio.band import TELEPHONE_RATE
from service.audio.decode import decode
from service.audio.frontend import AudioInput
from service.audio.pipeline import to_mono_16k
from service.concurrency import Cancellation, compute
from service.config import RealtimeSettings
from service.diarization.turns import SpanVectors
from service.enrollment.identification import IdentificationService, Segment
from service.enrollment.service import EnrollmentService
from service.enrollment.speaker_ids import is_speaker_id
from service.errors import (
    BadRequest,
    InsufficientSpeech,
    InvalidSpeakerId,
    PayloadTooLarge,
    ServiceError,
    TooManyStreams,
    Unauthorized,
)
from service.storage.repository import TenantKey

UNKNOWN = "unknown"


@dataclass(frozen=True)
class StreamSegment:
    speaker_id: str  # an enrolled speaker's id, or "unknown"
    start: float  # seconds of stream time
    end: float
    # The decision rule's, of the stretch's voice against `speaker_id` (its best if unknown); None
    # when the tenant has no enrolled speaker.
    score: float | None


@dataclass(frozen=True)
class ChunkAnswer:
    """The answer to one chunk: its stretches of speech, or the error that refused it."""

    index: int  # the chunk's place in the stream, from 0
    start: float  # stream time of the chunk, seconds
    end: float
    segments: list[StreamSegment]
    error: ServiceError | None = None


class StreamLimiter:
    """Streams open per API key, and in all; thread-safe."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, key_id: str) -> Iterator[None]:
        with self._lock:
            if self._open.get(key_id, 0) >= self.per_key:
                raise TooManyStreams(f"At most {self.per_key} streams may be open per API key")
            if sum(self._open.values()) >= self.total:
                raise TooManyStreams("The service has as many streams open as it serves; try again later")
            self._open[key_id] = self._open.get(key_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._open[key_id] -= 1
                if not self._open[key_id]:
                    del self._open[key_id]

    def open_streams(self, key_id: str) -> int:
        with self._lock:
            return self._open.get(key_id, 0)


def parse_speaker_ids(value: str | Sequence[str] | None) -> list[str]:
    """`speakerids` as the client sends it: comma-separated (or a list), blanks dropped."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    ids = [s.strip() for s in items if s.strip()]
    for speaker_id in ids:
        if not is_speaker_id(speaker_id):
            raise InvalidSpeakerId()
    return ids


def authenticate(
    authenticate_key: Callable[[str], TenantKey | None], hit: Callable[[str], None] | None, key: str | None
) -> TenantKey:
    """The HTTP routes' key rules for a stream: a missing or unknown key is Unauthorized."""
    if not key:
        raise Unauthorized("An API key is required (apikey)")
    tenant = authenticate_key(key)
    if tenant is None:
        raise Unauthorized("Invalid or revoked API key")
    if hit is not None:
        hit(tenant.key_id)
    return tenant


class StreamSession:
    """The state of one open stream: its tenant, candidates, clock and the audio context."""

    def __init__(
        self,
        identification: IdentificationService,
        tenant: TenantKey,
        speaker_ids: Sequence[str],
        settings: RealtimeSettings,
        *,
        decode_timeout_s: float,
        hit: Callable[[str], None] | None = None,
        key_active: Callable[[str], bool] | None = None,
    ) -> None:
        self.identification = identification
        self.tenant = tenant
        self.speaker_ids = list(speaker_ids)
        self.settings = settings
        self.decode_timeout_s = decode_timeout_s
        self.hit = hit
        self.key_active = key_active
        self.clock = 0.0  # stream time where the next chunk starts unless it says otherwise
        self.count = 0
        self._context = np.zeros(0, dtype=np.float32)  # 16 kHz audio just before `clock`
        self._heard = 0  # samples of audio scored so far: where the next chunk's audio starts
        self._known = SpanVectors()  # vectors of the context's audio, keyed by those sample counts
        self._source_rate = MODEL_RATE  # the rate the context's chunks came at
        self._named: tuple[str, float] | None = None  # the speaker last named, and where that ended
        # A new speaker's first words in a chunk are a voice of their own from a shorter stretch.
        self._turns = dataclasses.replace(identification.turn_options, min_voice_s=settings.min_voice_seconds)

    @staticmethod
    def check_speakers(enrollment: EnrollmentService, tenant_id: int, speaker_ids: Sequence[str]) -> None:
        """SpeakerNotFound for an id the tenant does not have, as HTTP's identify answers 404."""
        for speaker_id in speaker_ids:
            enrollment.status(tenant_id, speaker_id)

    def chunk(
        self,
        audio: AudioInput | Callable[[], AudioInput],
        offset: float | None = None,
        cancel: Cancellation | None = None,
    ) -> ChunkAnswer:
        """Score one chunk (or what `audio()` makes of the message: its errors are the chunk's);
        `offset` is its stream time when the client says it, else the stream's clock. A refused
        chunk comes back with its error and leaves the stream as it was. A key revoked since the
        stream opened raises Unauthorized, which ends the stream: each chunk is a request."""
        if self.key_active is not None and not self.key_active(self.tenant.key_id):
            raise Unauthorized("Invalid or revoked API key")
        index, start = self.count, self.clock if offset is None else offset
        self.count += 1
        if not (math.isfinite(start) and start >= 0):
            bad = BadRequest("segmentOffset must be a finite number of seconds, 0 or more")
            return ChunkAnswer(index, self.clock, self.clock, [], bad)
        try:
            if self.hit is not None:
                self.hit(self.tenant.key_id)
            wave, source_rate = self._decode(audio() if callable(audio) else audio, cancel)
        except ServiceError as exc:
            return ChunkAnswer(index, start, start, [], exc)
        end = start + len(wave) / MODEL_RATE
        if (source_rate <= TELEPHONE_RATE) != (self._source_rate <= TELEPHONE_RATE):
            # A stream that moves between a call's band and a wider one: the window is scored in
            # one band (that of the rate its chunks came at), so context of the other band would
            # decide it for this chunk's speech.
            self._drop_context()
        self._source_rate = source_rate
        try:
            segments = self._score(wave, start, cancel)
        except ServiceError as exc:
            return ChunkAnswer(index, start, end, [], exc)
        finally:
            self._advance(wave, end)
        return ChunkAnswer(index, start, end, segments)

    def refuse(self, error: ServiceError) -> ChunkAnswer:
        """The answer to a message that carried no chunk to score: its place, and the error."""
        self.count += 1
        return ChunkAnswer(self.count - 1, self.clock, self.clock, [], error)

    def _decode(self, audio: AudioInput, cancel: Cancellation | None) -> tuple[np.ndarray, int]:
        """The chunk at 16 kHz, and the rate it came at."""
        if len(audio.data) > self.settings.max_chunk_bytes:
            raise PayloadTooLarge(f"A chunk may hold at most {self.settings.max_chunk_bytes} bytes")
        decoded = decode(
            audio.data,
            audio.encoding,
            audio.sample_rate,
            max_seconds=self.settings.max_chunk_seconds,
            timeout_s=self.decode_timeout_s,
        )
        wave, _ = to_mono_16k(decoded, run=functools.partial(compute.run, cancel=cancel))
        return wave, decoded.sample_rate

    def _score(self, wave: np.ndarray, start: float, cancel: Cancellation | None) -> list[StreamSegment]:
        window = np.concatenate([self._context, wave])
        lead = len(self._context) / MODEL_RATE  # window time of the chunk's start
        pcm = (np.clip(window, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        # Sample counts, not the client's offsets: the context is the audio heard just before.
        self._known.origin, self._known.answered = self._heard - len(self._context), self._heard
        found = self.identification.segments(
            self.tenant.tenant_id,
            # At 16 kHz, but heard as the chunks came: a call's band is judged, and its speech
            # found, as identify would for the same 8 kHz audio.
            AudioInput(pcm, "LINEAR16", MODEL_RATE, source_rate=self._source_rate),
            self.speaker_ids,
            cancel,
            known=self._known,
            turns=self._turns,
        )
        out: list[StreamSegment] = []
        for s in found:
            if s.end <= lead:
                continue
            a, b = round(start + max(float(s.start) - lead, 0.0), 2), round(start + float(s.end) - lead, 2)
            name = s.speaker_id or self._accepted(s) or self._held(s, a, b)
            if name is not None:
                self._named = (name, b)
            last = out[-1] if out else None
            if (
                last
                and name is not None
                and last.speaker_id == name
                and a - last.end <= self.identification.merge_gap_s
            ):
                best = max((x for x in (last.score, s.score) if x is not None), default=None)
                out[-1] = StreamSegment(name, last.start, b, best)
            else:
                out.append(StreamSegment(name or UNKNOWN, a, b, s.score))
        if not out:
            raise InsufficientSpeech("No speech in this chunk")
        return out

    def _accepted(self, segment: Segment) -> str | None:
        """The best candidate of a voice that passes the identify threshold for it, yet was left
        unknown because another voice of the window took that speaker (a diarized clip names each
        speaker once): in a stream's short window that is one voice found twice, which held the
        name from half of a speaker's own chunk."""
        if segment.candidate is None or segment.score is None:
            return None
        return segment.candidate if segment.score >= self.identification.thresholds.identify else None

    def _held(self, segment: Segment, start: float, end: float) -> str | None:
        """The speaker named just before, for a voice no one was accepted for whose best candidate
        that speaker is, within `hold_margin` of the threshold: a stream's short stretch (a turn
        resumed after a pause, a chunk's first words) is a weaker sample than identify's whole
        turn, and the speaker who just spoke is the likeliest to go on."""
        margin = self.settings.hold_margin
        if not margin or self._named is None or segment.score is None:
            return None
        if end - start > self.settings.hold_max_seconds:  # the answer's stretch, in the chunk
            return None
        name, named_end = self._named
        if segment.candidate != name or start - named_end > self.settings.hold_seconds:
            return None
        return name if segment.score >= self.identification.thresholds.identify - margin else None

    def _drop_context(self) -> None:
        self._context = self._context[:0]
        self._known.forget_before(self._heard)

    def _advance(self, wave: np.ndarray, end: float) -> None:
        keep = int(self.settings.context_seconds * MODEL_RATE)
        self._context = np.concatenate([self._context, wave])[-keep:] if keep else self._context[:0]
        self._heard += len(wave)
        self._known.forget_before(self._heard - len(self._context))
        self.clock = end
