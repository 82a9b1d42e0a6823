"""The hosted API's diarization route: who speaks when, without enrollment (compatible fault shape)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.compat import FAULTS
from service.api.convert import remote_audio_input
from service.api.deps import ServicesDep, TenantDep, run_for_client
from service.api.schemas import CompatDiarizeRequest, DiarizedSegmentOut, DiarizeResponse
from service.diarization.service import max_speakers_for

api = APIRouter(prefix="/audio/generic/api/v1/sync", tags=["DeepAffects-compatible (v1)"], responses=FAULTS)


@api.post("/diarize", response_model=DiarizeResponse, operation_id="compat_diarize_v1")
async def diarize(
    body: CompatDiarizeRequest, request: Request, tenant: TenantDep, services: ServicesDep
) -> DiarizeResponse:
    """Speaker turns: `speakers` voices (-1: found from the audio), those matching an enrolled id of
    `speakerIds` named by it, the others speaker_1, speaker_2, ... in order of first appearance."""
    result = await run_for_client(
        request,
        services.diarization.diarize,
        tenant.tenant_id,
        await remote_audio_input(body, services.settings),
        body.speakers,
        body.speakerIds,
        body.doVad,
        max_speakers_for(body.audioType),
    )
    return DiarizeResponse(
        num_speakers=result.num_speakers,
        segments=[
            DiarizedSegmentOut(speaker_id=s.speaker_id, start=s.start, end=s.end) for s in result.segments
        ],
    )
