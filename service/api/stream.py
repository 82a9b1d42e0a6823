"""`/v1/identify/stream`: realtime identification over a WebSocket, for browsers and apps without gRPC.

The API key as on the other native routes (`apikey` / `api_key` query, `X-API-Key`, `Authorization:
Bearer`); query `encoding` (default LINEAR16: 16-bit little-endian PCM), `sampleRate` (needed for raw
PCM), `speakerIds` (comma-separated; all of the tenant's when absent). Each binary frame is one
chunk: raw samples, or a whole audio file in any encoding the HTTP routes take. Each frame gets one
JSON text message: ``{"chunk", "start", "end", "segments": [{"speakerId", "start", "end", "score"}]}``
in stream time (`score`: the decision rule's, as `/v1/identify` reports it), or ``{"chunk",
"start", "end", "error": {"code", "message"}}`` for a refused frame, and the stream goes on. A
stream that cannot start (bad key, unknown speaker, too many streams) or goes idle is closed with
code 4000 + the HTTP status of its error (4401, 4404, 4429, 4408) after an ``{"error": ...}`` message.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Message

from service import metrics
from service.api.deps import Services, one_key, run_blocking
from service.audio.frontend import AudioInput
from service.concurrency import Cancellation
from service.errors import (
    BadRequest,
    NotReady,
    RequestCancelled,
    ServiceError,
    StreamIdle,
)
from service.realtime.session import (
    ChunkAnswer,
    StreamLimiter,
    StreamSession,
    authenticate,
    parse_speaker_ids,
)
from service.storage.database import outage

api = APIRouter(prefix="/v1", tags=["identification"])


def _key(ws: WebSocket) -> str | None:
    q, h = ws.query_params, ws.headers
    bearer = h.get("authorization", "")
    token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
    return one_key(q.get("apikey"), q.get("api_key"), h.get("x-api-key"), token)


def _rate(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(float(value))
    except ValueError:
        raise BadRequest("sampleRate must be a number") from None


def _error(exc: ServiceError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message}


def answer_json(answer: ChunkAnswer) -> dict[str, Any]:
    out: dict[str, Any] = {
        "chunk": answer.index,
        "start": round(answer.start, 2),
        "end": round(answer.end, 2),
    }
    if answer.error is not None:
        out["error"] = _error(answer.error)
    else:
        out["segments"] = [
            {"speakerId": s.speaker_id, "start": s.start, "end": s.end, "score": s.score}
            for s in answer.segments
        ]
    return out


def _open(services: Services, ws: WebSocket) -> StreamSession:
    """Blocking: the key, the candidates; the session (its stream slot is taken by the caller)."""
    hit = services.limiter.hit if services.limiter is not None else None
    tenant = authenticate(services.store.authenticate, hit, _key(ws))
    speaker_ids = parse_speaker_ids(ws.query_params.get("speakerIds") or ws.query_params.get("speakerids"))
    StreamSession.check_speakers(services.enrollment, tenant.tenant_id, speaker_ids)
    return StreamSession(
        services.identification,
        tenant,
        speaker_ids,
        services.settings.realtime,
        decode_timeout_s=services.settings.audio.decode_timeout_s,
        hit=hit,
        key_active=services.store.key_active,
    )


@api.websocket("/identify/stream")
async def identify_stream(ws: WebSocket) -> None:
    await ws.accept()
    try:
        services: Services | None = getattr(ws.app.state, "services", None)
        if services is None:
            raise NotReady("The service is still starting")
        streams: StreamLimiter = ws.app.state.streams
        encoding = ws.query_params.get("encoding") or "LINEAR16"
        rate = _rate(ws.query_params.get("sampleRate") or ws.query_params.get("samplerate"))
        session = await run_blocking(_open, services, ws)
        with streams.slot(session.tenant.key_id):
            await _serve(ws, session, encoding, rate, services.settings.realtime.idle_timeout_s)
    except WebSocketDisconnect:
        return
    except ServiceError as exc:
        await _refuse(ws, exc)
    except SQLAlchemyError as exc:  # the key check or the scoring could not reach the database
        refused = outage(exc, path=ws.url.path)
        if refused is None:
            raise
        await _refuse(ws, refused)


async def _refuse(ws: WebSocket, exc: ServiceError) -> None:
    """End the stream with `exc`: its error as a message, then a close of code 4000 + its status."""
    with contextlib.suppress(Exception):
        await ws.send_json({"error": _error(exc)})
        await ws.close(code=4000 + exc.status, reason=exc.code)


async def _serve(
    ws: WebSocket, session: StreamSession, encoding: str, rate: int | None, idle_s: float
) -> None:
    """Frames in, one answer each, one frame at a time: a client that sends faster than it is
    answered waits on the socket's own buffers (one frame at most is read ahead), and memory stays
    bounded. While a chunk is scored the socket is still read, so a client that hangs up stops its
    chunk's work at the next check, as an HTTP request's does."""
    cancel = Cancellation()
    receiving: asyncio.Task[Message] | None = None
    try:
        while True:
            if receiving is None:
                receiving = asyncio.create_task(ws.receive())
            try:
                message = await asyncio.wait_for(asyncio.shield(receiving), idle_s)
            except TimeoutError:
                raise StreamIdle(f"No frame came for {idle_s:g} s") from None
            receiving = None
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await ws.send_json(answer_json(session.refuse(BadRequest("Send audio as binary frames"))))
                continue
            work = asyncio.create_task(
                run_blocking(session.chunk, AudioInput(data, encoding, rate), None, cancel)
            )
            receiving = asyncio.create_task(ws.receive())
            await asyncio.wait({work, receiving}, return_when=asyncio.FIRST_COMPLETED)
            gone = receiving.done() and (
                receiving.exception() is not None or receiving.result()["type"] == "websocket.disconnect"
            )
            if gone:
                cancel.cancel()  # nobody will read the answer: the chunk stops at its next check
                with contextlib.suppress(Exception):
                    if isinstance((await work).error, RequestCancelled):
                        metrics.CANCELLED.labels(ws.url.path).inc()
                return
            answer = await work  # a next frame that came meanwhile waits in `receiving`
            await ws.send_json(answer_json(answer))
    finally:
        cancel.cancel()
        if receiving is not None:
            receiving.cancel()
