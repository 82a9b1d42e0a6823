"""Native REST routes under /v1: enrollment progress, scores and quality the compatible routes hide."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError

from service.api.convert import audio_input, encoding_for, media_type, status_out
from service.api.deps import ServicesDep, TenantDep, run_blocking, run_for_client
from service.api.errors import validation_summary
from service.api.schemas import (
    SPEAKER_ID_RULE,
    CandidateOut,
    EnrollmentStatusOut,
    EnrollRequest,
    ErrorBody,
    IdentifyRequest,
    IdentifyResponse,
    SpeakerPage,
    VerifyRequest,
    VerifyResponse,
)
from service.audio.frontend import AudioInput
from service.errors import BadRequest, EmptyAudio, UnsupportedMediaType, shown

PathSpeakerId = Annotated[str, Path(**SPEAKER_ID_RULE)]
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)
}
AUDIO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": EnrollRequest.model_json_schema()},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

api = APIRouter(prefix="/v1", tags=["speakers"], responses=ERRORS)


async def read_audio(request: Request, sample_rate: int | None, encoding: str | None) -> AudioInput:
    """The audio of a request: JSON with base64 `content`, or the raw file as the body."""
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    if content_type.split(";", 1)[0].strip().lower() == "application/json":
        try:
            return audio_input(EnrollRequest.model_validate(json.loads(body)))
        except ValidationError as exc:
            raise BadRequest(f"Invalid JSON audio body: {validation_summary(exc.errors())}") from exc
        except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
            raise BadRequest("Invalid JSON audio body: not valid JSON") from exc
    name = encoding or encoding_for(content_type)
    if name is None:
        raise UnsupportedMediaType(
            f"Content-Type {shown(content_type) or '(none)'} is not audio: send application/json, an "
            "audio/* type, or application/octet-stream (?encoding= names a raw format)"
        )
    _, params = media_type(content_type)
    if params.get("channels", "1") != "1":
        raise BadRequest("Raw audio must be one channel (channels=1)")
    if sample_rate is None and params.get("rate", "").isdigit():
        sample_rate = int(params["rate"])  # audio/L16; rate=8000
    if not body:
        raise EmptyAudio()
    return AudioInput(data=body, encoding=name, sample_rate=sample_rate)


@api.post(
    "/speakers/{speakerId}/enrollments",
    status_code=201,
    response_model=EnrollmentStatusOut,
    openapi_extra=AUDIO_BODY,
)
async def enroll(
    speakerId: PathSpeakerId,
    request: Request,
    tenant: TenantDep,
    services: ServicesDep,
    sampleRate: Annotated[int | None, Query(ge=1, le=10_000_000)] = None,
    encoding: Annotated[str | None, Query(max_length=32)] = None,
) -> EnrollmentStatusOut:
    """Add one sample (JSON with base64 `content`, or the raw audio file as the body)."""
    audio = await read_audio(request, sampleRate, encoding)
    status = await run_for_client(request, services.enrollment.enroll, tenant.tenant_id, speakerId, audio)
    return status_out(status)


@api.get("/speakers", response_model=SpeakerPage)
async def list_speakers(
    tenant: TenantDep,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SpeakerPage:
    statuses, total = await run_blocking(services.enrollment.list_speakers, tenant.tenant_id, offset, limit)
    return SpeakerPage(speakers=[status_out(s) for s in statuses], total=total, offset=offset, limit=limit)


@api.get("/speakers/{speakerId}", response_model=EnrollmentStatusOut)
async def get_speaker(
    speakerId: PathSpeakerId, tenant: TenantDep, services: ServicesDep
) -> EnrollmentStatusOut:
    return status_out(await run_blocking(services.enrollment.status, tenant.tenant_id, speakerId))


@api.delete("/speakers/{speakerId}", status_code=204, response_class=Response)
async def delete_speaker(speakerId: PathSpeakerId, tenant: TenantDep, services: ServicesDep) -> Response:
    await run_blocking(services.enrollment.delete_speaker, tenant.tenant_id, speakerId)
    return Response(status_code=204)


@api.delete("/speakers/{speakerId}/enrollments/{sampleId}", status_code=204, response_class=Response)
async def delete_sample(
    speakerId: PathSpeakerId,
    sampleId: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
    tenant: TenantDep,
    services: ServicesDep,
) -> Response:
    await run_blocking(services.enrollment.delete_sample, tenant.tenant_id, speakerId, sampleId)
    return Response(status_code=204)


@api.post("/identify", response_model=IdentifyResponse, tags=["identification"])
async def identify(
    body: IdentifyRequest, request: Request, tenant: TenantDep, services: ServicesDep
) -> IdentifyResponse:
    """Who is speaking: the best enrolled speaker above the threshold, or null (open set)."""
    found = await run_for_client(
        request,
        services.identification.identify,
        tenant.tenant_id,
        audio_input(body),
        body.speakerIds,
        body.topK,
    )
    return IdentifyResponse(
        speakerId=found.speaker_id,
        score=found.score,
        threshold=found.threshold,
        candidates=[
            CandidateOut(speakerId=c.speaker_id, score=c.score, cosine=c.cosine, complete=c.complete)
            for c in found.candidates
        ],
        speechSeconds=found.speech_seconds,
        channel=found.channel,
    )


@api.post("/verify", response_model=VerifyResponse, tags=["identification"])
async def verify(
    body: VerifyRequest, request: Request, tenant: TenantDep, services: ServicesDep
) -> VerifyResponse:
    """Is this clip the given speaker?"""
    result = await run_for_client(
        request, services.identification.verify, tenant.tenant_id, audio_input(body), body.speakerId
    )
    return VerifyResponse(
        match=result.match,
        score=result.score,
        threshold=result.threshold,
        cosine=result.cosine,
        complete=result.complete,
        speechSeconds=result.speech_seconds,
        channel=result.channel,
    )
