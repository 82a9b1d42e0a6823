"""Request and response bodies, named for their role. Field names follow the hosted API (camelCase)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.audio.band import Band
from service.enrollment import speaker_ids
from service.enrollment.ports import SpeakerStatus

# Keyword arguments of pydantic's Field and FastAPI's Path: bodies and URLs check one rule.
SPEAKER_ID_RULE: dict[str, Any] = {
    "pattern": speaker_ids.PATTERN,
    "max_length": speaker_ids.MAX_LENGTH,
    "description": speaker_ids.DESCRIPTION,
}
SpeakerId = Annotated[str, Field(**SPEAKER_ID_RULE)]


class AudioFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str = Field(description="base64 of the audio file (or raw samples)")
    encoding: str = Field(
        description="FLAC, WAV, MP3, OGG_OPUS, OGG_VORBIS, WEBM, M4A, AAC, AMR, LINEAR16, MULAW, ALAW"
    )
    sampleRate: int | None = Field(
        None, ge=1, le=10_000_000, description="Hz; required for raw encodings, a container's header wins"
    )
    languageCode: str = "en-US"


# --- DeepAffects-compatible ----------------------------------------------------------------------


class CompatEnrollRequest(AudioFields):
    speakerId: SpeakerId


class CompatDeleteRequest(BaseModel):
    speakerId: SpeakerId


class CompatMessage(BaseModel):
    message: Literal["Success", "Complete"]


class CompatEnrolledSpeaker(BaseModel):
    speaker_id: str
    enrollment_complete: Literal["True", "False"]


class CompatEnrolledSpeakers(BaseModel):
    developer_id: str
    enrolled_speaker_ids: list[CompatEnrolledSpeaker]


class Fault(BaseModel):
    faultstring: str
    detail: dict[str, str]


class FaultBody(BaseModel):
    fault: Fault


# --- native --------------------------------------------------------------------------------------


class EnrollRequest(AudioFields):
    pass


class LastSample(BaseModel):
    sampleId: str
    speechSeconds: float
    snrDb: float
    accepted: bool = True


class EnrollmentStatusOut(BaseModel):
    speakerId: str
    status: SpeakerStatus
    samples: int
    speechSeconds: float
    spread: float
    progress: float = Field(ge=0.0, le=1.0)
    missing: list[str]
    lastSample: LastSample | None = None
    warnings: list[str] | None = Field(
        None,
        description="Notes on the voiceprint, e.g. 'voice very close to another enrolled speaker' (identify "
        "could take one for the other; the other is not named). Given on one speaker's status (enroll, "
        "GET /v1/speakers/{speakerId}); null in lists.",
    )


class SpeakerPage(BaseModel):
    speakers: list[EnrollmentStatusOut]
    total: int
    offset: int
    limit: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = {}


# --- identification ------------------------------------------------------------------------------


class IdentifyRequest(AudioFields):
    speakerIds: list[SpeakerId] | None = Field(None, max_length=10_000, description="restrict to these")
    topK: int = Field(5, ge=1, le=100)


class CandidateOut(BaseModel):
    speakerId: str
    score: float
    cosine: float
    complete: bool


class IdentifyResponse(BaseModel):
    speakerId: str | None
    score: float
    threshold: float
    candidates: list[CandidateOut]
    speechSeconds: float
    channel: Band = Field(
        Band.WIDE,
        description="the band the clip was scored in: narrowband clips (calls) against voiceprints of it",
    )


class VerifyRequest(AudioFields):
    speakerId: SpeakerId


class VerifyResponse(BaseModel):
    match: bool
    score: float
    threshold: float
    cosine: float
    complete: bool
    speechSeconds: float
    channel: Band = Field(Band.WIDE, description="the band the clip was scored in")


class CompatIdentifyRequest(AudioFields):
    speakerIds: list[SpeakerId] | None = Field(None, max_length=10_000)


class CompatSegment(BaseModel):
    speakerId: str
    start: float
    end: float
