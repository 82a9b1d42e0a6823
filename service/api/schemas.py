"""Request and response bodies, named for their role. Field names follow the hosted API (camelCase)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The one speakerId rule: 1 to 128 of [A-Za-z0-9_.-], not dots alone ("." and ".." are path
# segments: a URL cannot name them). Without look-ahead, which pydantic's regex engine lacks.
SPEAKER_ID_PATTERN = r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
SPEAKER_ID_MAX_LENGTH = 128
SPEAKER_ID_RULE: dict[str, Any] = {
    "pattern": SPEAKER_ID_PATTERN,
    "max_length": SPEAKER_ID_MAX_LENGTH,
    "description": "1-128 of [A-Za-z0-9_.-], not dots alone",
}
SpeakerId = Annotated[str, Field(**SPEAKER_ID_RULE)]


def is_speaker_id(name: str) -> bool:
    return len(name) <= SPEAKER_ID_MAX_LENGTH and re.fullmatch(SPEAKER_ID_PATTERN, name) is not None


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
    status: Literal["enrolling", "complete"]
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


class VerifyRequest(AudioFields):
    speakerId: SpeakerId


class VerifyResponse(BaseModel):
    match: bool
    score: float
    threshold: float
    cosine: float
    complete: bool
    speechSeconds: float


class CompatIdentifyRequest(AudioFields):
    speakerIds: list[SpeakerId] | None = Field(None, max_length=10_000)


class CompatSegment(BaseModel):
    speakerId: str
    start: float
    end: float


# --- diarization (the hosted speaker family) -------------------------------------------------------


class DiarizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str | None = Field(None, description="base64 of the audio file; exclusive with url")
    url: str | None = Field(
        None, max_length=4096, description="where to fetch the audio; exclusive with content"
    )
    encoding: str = Field(description="as for identify")
    sampleRate: int | None = Field(None, ge=1, le=10_000_000, description="Hz; required for raw encodings")
    languageCode: str = "en-US"
    speakers: int = Field(-1, ge=-1, le=50, description="how many speakers; -1: found from the audio")
    audioType: str = Field(
        "callcenter", max_length=64, description='a hint: "callcenter" (up to 6 speakers), "meeting" (more)'
    )
    speakerIds: list[SpeakerId] | None = Field(
        None, max_length=10_000, description="enrolled speakers whose voices are labelled with their id"
    )
    doVad: bool = Field(False, description="leave every pause out of the segments")

    @field_validator("speakers")
    @classmethod
    def _known_or_found(cls, value: int) -> int:
        if value == 0:
            raise ValueError("speakers is a positive number, or -1 to find it from the audio")
        return value


class DiarizedSegmentOut(BaseModel):
    speaker_id: str
    start: float
    end: float


class DiarizeResponse(BaseModel):
    num_speakers: int
    segments: list[DiarizedSegmentOut]
