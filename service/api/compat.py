"""DeepAffects-compatible routes: apps switch to this service by changing the host.

Served under both ``/audio/generic/api/v1`` and ``/v2``; errors in the hosted API's fault shape.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.convert import audio_input, remote_audio_input
from service.api.deps import ServicesDep, TenantDep, run_blocking, run_for_client
from service.api.schemas import (
    CompatDeleteRequest,
    CompatEnrolledSpeaker,
    CompatEnrolledSpeakers,
    CompatEnrollRequest,
    CompatIdentifyRequest,
    CompatMessage,
    CompatSegment,
    FaultBody,
)

FAULTS: dict[int | str, dict[str, object]] = {
    code: {"model": FaultBody} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)
}


def router(version: str) -> APIRouter:
    api = APIRouter(
        prefix=f"/audio/generic/api/{version}/sync/diarization",
        tags=[f"DeepAffects-compatible ({version})"],
        responses=FAULTS,
    )

    @api.post("/enroll", response_model=CompatMessage, operation_id=f"compat_enroll_{version}")
    async def enroll(
        body: CompatEnrollRequest,
        request: Request,
        response: Response,
        tenant: TenantDep,
        services: ServicesDep,
    ) -> CompatMessage:
        """Add one sample to a speaker: "Success" while more are needed, then "Complete". The
        body is the hosted API's; headers say how far the enrollment is (`X-Enrollment-Progress`,
        0 to 1, and `X-Enrollment-Missing`, what it still needs, as the native status does)."""
        status = await run_for_client(
            request, services.enrollment.enroll, tenant.tenant_id, body.speakerId, audio_input(body)
        )
        response.headers["X-Enrollment-Progress"] = f"{status.progress:.3f}"
        response.headers["X-Enrollment-Missing"] = ", ".join(status.missing)
        return CompatMessage(message="Complete" if status.complete else "Success")

    @api.post("/delete", response_model=CompatMessage, operation_id=f"compat_delete_{version}")
    async def delete(body: CompatDeleteRequest, tenant: TenantDep, services: ServicesDep) -> CompatMessage:
        """Remove every sample vector and row of the speaker."""
        await run_blocking(services.enrollment.delete_speaker, tenant.tenant_id, body.speakerId)
        return CompatMessage(message="Success")

    @api.get(
        "/get_enrolled_speakers",
        response_model=CompatEnrolledSpeakers,
        operation_id=f"compat_get_enrolled_speakers_{version}",
    )
    async def get_enrolled_speakers(tenant: TenantDep, services: ServicesDep) -> CompatEnrolledSpeakers:
        statuses, _ = await run_blocking(services.enrollment.list_speakers, tenant.tenant_id)
        return CompatEnrolledSpeakers(
            developer_id=tenant.tenant,
            enrolled_speaker_ids=[
                CompatEnrolledSpeaker(
                    speaker_id=s.speaker_id, enrollment_complete="True" if s.complete else "False"
                )
                for s in statuses
            ],
        )

    @api.post("/identify", response_model=list[CompatSegment], operation_id=f"compat_identify_{version}")
    async def identify(
        body: CompatIdentifyRequest, request: Request, tenant: TenantDep, services: ServicesDep
    ) -> list[CompatSegment]:
        """The clip's speech in time order, each stretch labelled with an enrolled speaker or "unknown"."""
        segments = await run_for_client(
            request,
            services.identification.segments,
            tenant.tenant_id,
            await remote_audio_input(body, services.settings),
            body.speakerIds,
        )
        return [
            CompatSegment(speakerId=s.speaker_id or "unknown", start=s.start, end=s.end) for s in segments
        ]

    return api
