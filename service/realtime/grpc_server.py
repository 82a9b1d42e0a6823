"""The hosted API's realtime gRPC service, `deepaffectsrealtime.DeepAffectsRealtime`.

`IdentifySpeaker` streams chunks in and stretches of speech out, as the official client's
`deepaffects.realtime` module calls it (metadata `apikey`, `speakerids`, `encoding`, `samplerate`,
`languagecode`). The emotion methods of the same service answer UNIMPLEMENTED (the generated base
class does that).

Each stream holds one worker thread of the server, and a reader thread that keeps at most
`queue_chunks` chunks read ahead: past that the reader stops reading, and HTTP/2 flow control
holds the client back. Answers are written one at a time (grpcio's synchronous server waits for
each write), so a slow reader holds up its own stream and nothing piles up in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import Services
from service.audio.decode import b64decode
from service.audio.frontend import AudioInput
from service.concurrency import Cancellation
from service.errors import (
    BadRequest,
    DatabaseUnavailable,
    NotReady,
    RateLimited,
    ServiceError,
    SpeakerNotFound,
    StreamIdle,
    TooManyStreams,
    Unauthorized,
)
from service.realtime import deepaffects_realtime_pb2 as pb
from service.realtime import deepaffects_realtime_pb2_grpc as pb_grpc
from service.realtime.session import (
    ChunkAnswer,
    StreamLimiter,
    StreamSession,
    authenticate,
    parse_speaker_ids,
)
from service.storage.database import outage

log = logging.getLogger(__name__)

# Bytes a stream may have in flight towards the server beyond what it has read: about one 3 s
# chunk of 16 kHz WAV as base64 (128 KB).
FLOW_WINDOW_BYTES = 128 * 1024

_END = object()  # the client closed its side


def status_code(exc: ServiceError) -> grpc.StatusCode:
    """A stream-level error's gRPC status, by the same classes that pick HTTP's status."""
    for kind, code in (
        (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
        (SpeakerNotFound, grpc.StatusCode.NOT_FOUND),
        (TooManyStreams, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (StreamIdle, grpc.StatusCode.DEADLINE_EXCEEDED),
        (NotReady, grpc.StatusCode.UNAVAILABLE),
        (DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
        (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT if exc.status < 500 else grpc.StatusCode.INTERNAL


def answer_messages(answer: ChunkAnswer) -> list[pb.SegmentSpeaker]:
    """A chunk's answer as the client reads it: one message per stretch, or one carrying `Error`."""
    if answer.error is not None:
        return [
            pb.SegmentSpeaker(
                id=answer.index,
                start=answer.start,
                end=answer.end,
                Error=f"{answer.error.code}: {answer.error.message}",
            )
        ]
    return [
        pb.SegmentSpeaker(
            id=answer.index,
            speaker_id=s.speaker_id,
            start=s.start,
            end=s.end,
            identification_score=s.score if s.score is not None else 0.0,  # proto3: no null
        )
        for s in answer.segments
    ]


def read_ahead(messages: Iterator[Any], size: int, idle_s: float, stop: threading.Event) -> Iterator[Any]:
    """`messages` read by a thread of its own at most `size` ahead; StreamIdle when none comes for
    `idle_s` seconds."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=size)

    def offer(item: Any) -> bool:
        """Queue `item`, waiting while the queue is full, until the call stops (nothing reads then)."""
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in messages:
                if not offer(item):
                    return
        except Exception:  # the call ended under the reader (client gone, deadline, a message over
            pass  # gRPC's size limit): the end is queued as for a stream that ended cleanly
        offer(_END)

    threading.Thread(target=read, name="grpc-read", daemon=True).start()
    while True:
        try:
            item = ahead.get(timeout=idle_s)
        except queue.Empty:
            raise StreamIdle(f"No chunk came for {idle_s:g} s") from None
        if item is _END:
            return
        yield item


class RealtimeServicer(pb_grpc.DeepAffectsRealtimeServicer):
    def __init__(self, services: Services, streams: StreamLimiter) -> None:
        self.services = services
        self.streams = streams

    def IdentifySpeaker(
        self, request_iterator: Iterator[pb.SegmentChunk], context: grpc.ServicerContext
    ) -> Iterator[pb.SegmentSpeaker]:
        services, settings = self.services, self.services.settings
        meta = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        cancel = Cancellation()
        stop = threading.Event()
        context.add_callback(cancel.cancel)
        context.add_callback(stop.set)
        hit = services.limiter.hit if services.limiter is not None else None
        try:
            tenant = authenticate(services.store.authenticate, hit, meta.get("apikey"))
            speaker_ids = parse_speaker_ids(meta.get("speakerids"))
            StreamSession.check_speakers(services.enrollment, tenant.tenant_id, speaker_ids)
            with self.streams.slot(tenant.key_id):
                session = StreamSession(
                    services.identification,
                    tenant,
                    speaker_ids,
                    settings.realtime,
                    decode_timeout_s=settings.audio.decode_timeout_s,
                    hit=hit,
                    key_active=services.store.key_active,
                )
                chunks = read_ahead(
                    request_iterator, settings.realtime.queue_chunks, settings.realtime.idle_timeout_s, stop
                )
                for chunk in chunks:
                    answer = session.chunk(_chunk_audio(chunk, meta), chunk.segmentOffset or None, cancel)
                    yield from answer_messages(answer)
        except ServiceError as exc:
            context.abort(status_code(exc), exc.message)
        except SQLAlchemyError as exc:  # the key check or the scoring could not reach the database
            refused = outage(exc, rpc="IdentifySpeaker")
            if refused is None:
                raise
            context.abort(status_code(refused), refused.message)
        finally:
            stop.set()


def _chunk_audio(chunk: pb.SegmentChunk, meta: dict[str, str]) -> Callable[[], AudioInput]:
    """The chunk's audio, its own fields first, the call's metadata for what it leaves out."""

    def load() -> AudioInput:
        rate = chunk.sampleRate or _int(meta.get("samplerate"))
        return AudioInput(b64decode(chunk.content), chunk.encoding or meta.get("encoding", ""), rate)

    return load


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value else None
    except ValueError:
        return None


def start(services: Services, streams: StreamLimiter, host: str, port: int) -> tuple[grpc.Server, int]:
    """Serve `IdentifySpeaker` on `host:port` (0: a free port) from threads of its own; the server
    (`server.stop(grace)` ends it) and its port."""
    rt = services.settings.realtime
    # A chunk's bytes travel as base64 text inside the message.
    max_message = rt.max_chunk_bytes * 4 // 3 + 64 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=rt.max_streams, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=rt.max_streams,
        options=[
            ("grpc.max_receive_message_length", max_message),
            # HTTP/2 flow control holds back a client that sends faster than it is answered only if
            # each stream's window stays small: gRPC grows it to the link's bandwidth-delay product
            # by default, which let a client queue minutes of audio ahead of its answers.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", FLOW_WINDOW_BYTES),
        ],
    )
    servicer = RealtimeServicer(services, streams)
    pb_grpc.add_DeepAffectsRealtimeServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"gRPC could not listen on {host}:{port}")
    server.start()
    log.info("grpc listening", extra={"port": bound})
    return server, bound
