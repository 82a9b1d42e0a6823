"""The hosted API's async routes: identify and diarize answered 202 at once, the result POSTed to the
webhook later, and the job status. The job is in the database before the 202 (service/jobs/)."""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from service.api.compat import FAULTS
from service.api.deps import ServicesDep, TenantDep, run_blocking
from service.api.schemas import (
    AsyncAccepted,
    CompatDiarizeRequest,
    CompatIdentifyRequest,
    JobOutcome,
    JobStatus,
    RemoteAudioFields,
)
from service.audio.decode import b64decode, precheck
from service.egress import check, url_egress, webhook_egress
from service.errors import BadRequest, FetchFailed, JobNotFound, NotReady
from service.jobs.ports import NewJob
from service.jobs.worker import JobWorker

REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
STATUS = {"queued": "Running", "running": "Running", "completed": "Completed", "failed": "Failed"}

Webhook = Annotated[str | None, Query(max_length=2048, description="where the result is POSTed")]
RequestId = Annotated[
    str | None, Query(max_length=128, description="the job's id (1-128 of [A-Za-z0-9_.:-]); a uuid if absent")
]


def get_jobs(request: Request) -> JobWorker:
    jobs: JobWorker | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise NotReady("The service is still starting")
    return jobs


JobsDep = Annotated[JobWorker, Depends(get_jobs)]


async def submit(
    request: Request,
    services: ServicesDep,
    tenant: TenantDep,
    jobs: JobWorker,
    kind: str,
    body: RemoteAudioFields,
    webhook: str | None,
    request_id: str | None,
    params: dict[str, Any],
) -> JSONResponse:
    """Check what can be checked now (a clear 4xx rather than a failed job), store the job, 202."""
    rid = request_id if request_id is not None else str(uuid.uuid4())
    if not REQUEST_ID.fullmatch(rid):
        raise BadRequest("request_id must be 1 to 128 characters of [A-Za-z0-9_.:-]")
    egress = services.settings.egress
    if webhook is not None:
        # A name that does not resolve now may later: delivery is retried, and every attempt recorded.
        with contextlib.suppress(FetchFailed):
            await run_blocking(check, webhook, webhook_egress(egress).rule)
    if params.get("speakerIds"):  # as sync identify and diarize: an id the tenant lacks is a 404
        await run_blocking(services.identification.check, tenant.tenant_id, params["speakerIds"])
    if body.url is not None:
        await run_blocking(check, body.url, url_egress(egress).rule)
    audio = b64decode(body.content) if body.content is not None else None
    if audio is not None:
        precheck(audio, body.encoding, body.sampleRate)
    job = NewJob(
        tenant_id=tenant.tenant_id,
        request_id=rid,
        kind=kind,
        api=request.url.path,
        params={"encoding": body.encoding, "sampleRate": body.sampleRate, "url": body.url, **params},
        audio=audio,
        webhook=webhook,
    )
    await run_blocking(jobs.store.create, job)
    return JSONResponse(AsyncAccepted(request_id=rid, api=request.url.path).model_dump(), status_code=202)


def router() -> APIRouter:
    api = APIRouter(tags=["DeepAffects-compatible async"], responses=FAULTS)

    def identify_route(version: str) -> None:
        @api.post(
            f"/audio/generic/api/{version}/async/diarization/identify",
            status_code=202,
            response_model=AsyncAccepted,
            operation_id=f"compat_async_identify_{version}",
        )
        async def identify(
            body: CompatIdentifyRequest,
            request: Request,
            services: ServicesDep,
            tenant: TenantDep,
            jobs: JobsDep,
            webhook: Webhook = None,
            request_id: RequestId = None,
        ) -> JSONResponse:
            """Identify later: 202 now, `{"request_id", "segments"}` to the webhook when done."""
            params = {"speakerIds": body.speakerIds}
            return await submit(
                request, services, tenant, jobs, "identify", body, webhook, request_id, params
            )

    def diarize_route(version: str) -> None:
        @api.post(
            f"/audio/generic/api/{version}/async/diarize",
            status_code=202,
            response_model=AsyncAccepted,
            operation_id=f"compat_async_diarize_{version}",
        )
        async def diarize(
            body: CompatDiarizeRequest,
            request: Request,
            services: ServicesDep,
            tenant: TenantDep,
            jobs: JobsDep,
            webhook: Webhook = None,
            request_id: RequestId = None,
        ) -> JSONResponse:
            """Diarize later: 202 now, `{"request_id", "response": {"num_speakers", "segments"}}` to the
            webhook when done."""
            params = {
                "speakers": body.speakers,
                "audioType": body.audioType,
                "speakerIds": body.speakerIds,
                "doVad": body.doVad,
            }
            return await submit(request, services, tenant, jobs, "diarize", body, webhook, request_id, params)

    for version in ("v1", "v2", "v3"):
        identify_route(version)
    for version in ("v1", "v2"):
        diarize_route(version)

    @api.get(
        "/transaction/generic/api/v1/async/status",
        response_model=JobStatus,
        operation_id="compat_async_status",
    )
    async def status(
        tenant: TenantDep,
        jobs: JobsDep,
        request_id: Annotated[str, Query(max_length=128, description="the id the 202 gave")],
    ) -> JobStatus:
        """Running (with progress), Completed or Failed, and what the webhook got."""
        job = await run_blocking(jobs.store.get, tenant.tenant_id, request_id)
        if job is None:
            raise JobNotFound()
        return JobStatus(
            status=STATUS[job.state],
            response=JobOutcome(request_id=job.request_id, response=job.result),
            progress=job.progress,
        )

    return api
