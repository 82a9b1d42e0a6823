"""The job kinds: each one runs the same use case as its synchronous route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.audio.frontend import AudioFrontEnd, AudioInput
from service.diarization.service import DiarizationService, max_speakers_for
from service.egress import Egress
from service.enrollment.identification import IdentificationService
from service.jobs.ports import JobRecord
from service.jobs.worker import Handler, JobContext


def fetcher(egress: Egress, max_bytes: int, timeout_s: float) -> Callable[[JobRecord], AudioInput]:
    """A job's audio: the bytes sent with it, or what its `url` holds (fetched when the job runs)."""

    def audio_of(job: JobRecord) -> AudioInput:
        p = job.params
        data = (
            job.audio
            if job.audio is not None
            else egress.fetch(p["url"], max_bytes=max_bytes, timeout_s=timeout_s)
        )
        return AudioInput(data=data, encoding=p["encoding"], sample_rate=p.get("sampleRate"))

    return audio_of


def identify(identification: IdentificationService, audio_of: Callable[[JobRecord], AudioInput]) -> Handler:
    def run(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        audio = audio_of(job)
        ctx.report(0.1)
        segments = identification.segments(job.tenant_id, audio, job.params.get("speakerIds"), ctx.cancel)
        return {
            "segments": [
                {"speaker_id": s.speaker_id or "unknown", "start": s.start, "end": s.end} for s in segments
            ]
        }

    return run


def diarize(
    diarization: DiarizationService,
    frontend: AudioFrontEnd,
    audio_of: Callable[[JobRecord], AudioInput],
) -> Handler:
    def run(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        p = job.params
        audio = audio_of(job)
        ctx.report(0.05)
        prepared = frontend.load(audio, diarization.limits, ctx.cancel)  # the sync route's checks
        ctx.report(0.2)
        result = diarization.diarize(
            job.tenant_id,
            prepared,
            p.get("speakers", -1),
            p.get("speakerIds"),
            p.get("doVad", False),
            max_speakers_for(p.get("audioType")),
            ctx.cancel,
        )
        return {
            "response": {
                "num_speakers": result.num_speakers,
                "segments": [
                    {"speaker_id": s.speaker_id, "start": s.start, "end": s.end} for s in result.segments
                ],
            }
        }

    return run
