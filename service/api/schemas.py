"""Request and response bodies, named for their role. Field names follow the hosted API (camelCase)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from service.audio import Band
from service.audio.decode import RAW, normalise_encoding
from service.enrollment import speaker_ids
from service.enrollment.ports import SpeakerStatus
from service.errors import UnsupportedEncoding

# Keyword arguments of pydantic's Field and FastAPI's Path: bodies and URLs check one rule.
SPEAKER_ID_RULE: dict[str, Any] = {
    "pattern": speaker_ids.PATTERN,
    "max_length": speaker_ids.MAX_LENGTH,
    "description": speaker_ids.DESCRIPTION,
}
SpeakerId = Annotated[str, Field(**SPEAKER_ID_RULE)]


def _lenient_rate(value: Any) -> Any:
    """Clients send the rate as a number or a string ("8000", "8000.0", MediaInfo's "16000")."""
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return value  # pydantic's own message then names the field
        return int(number) if number.is_integer() else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _names_raw_audio(encoding: Any) -> bool:
    try:
        return isinstance(encoding, str) and normalise_encoding(encoding) in RAW
    except UnsupportedEncoding:
        return False


def _or_default(default: str) -> Any:
    return BeforeValidator(lambda value: default if value is None else value)


class AudioFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str = Field(description="base64 of the audio file (or raw samples)")
    encoding: Annotated[str, _or_default("")] = Field(
        "",
        description="FLAC, WAV, MP3, OGG_OPUS, OGG_VORBIS, WEBM, M4A, AAC, AMR, LINEAR16, MULAW, ALAW "
        "(any case, MediaInfo's names too); a container is recognised from its bytes when the name is "
        "missing, vague or wrong",
    )
    sampleRate: Annotated[
        int | None,
        BeforeValidator(_lenient_rate),
        WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}),
    ] = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Hz (a number or a string of one); required for raw encodings, a container's header wins",
    )
    languageCode: Annotated[str, _or_default("en-US")] = "en-US"

    @model_validator(mode="before")
    @classmethod
    def _a_containers_rate_is_only_a_hint(cls, data: Any) -> Any:
        """A container's own header gives its rate, so a sampleRate that is no rate (0, "16 kHz")
        is dropped for it rather than refused; raw encodings need a real one."""
        if (
            isinstance(data, dict)
            and data.get("sampleRate") is not None
            and not _names_raw_audio(data.get("encoding"))
        ):
            rate = _lenient_rate(data["sampleRate"])
            if not (type(rate) is int and 1 <= rate <= 10_000_000):
                return {**data, "sampleRate": None}
        return data


class RemoteAudioFields(AudioFields):
    """Audio as `content` or fetched from `url` (exactly one of them)."""

    content: str | None = Field(None, description="base64 of the audio file (or raw samples)")  # type: ignore[assignment]
    url: str | None = Field(
        None,
        max_length=2048,
        description="http(s) address of the audio file, if the operator allows fetching",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RemoteAudioFields:
        if (self.content is None) == (self.url is None):
            raise ValueError("give exactly one of content and url")
        return self


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
    speakerId: str | None = Field(description="null when no enrolled speaker passes the threshold")
    score: float | None = Field(
        description="the best candidate's score; null when the tenant has no enrolled speaker to compare with"
    )
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


class CompatIdentifyRequest(RemoteAudioFields):
    speakerIds: list[SpeakerId] | None = Field(None, max_length=10_000)


class CompatDiarizeRequest(RemoteAudioFields):
    speakers: int = Field(
        -1,
        ge=-1,
        le=100,
        description="number of speakers; -1: found from the audio. A given number is obeyed up to the "
        "stretches of speech the clip holds (each voice is at least one): one sentence is one voice",
    )
    audioType: str | None = Field(
        None, max_length=32, description="callcenter (up to ~6 speakers) or meeting"
    )
    speakerIds: list[SpeakerId] | None = Field(None, max_length=10_000)
    doVad: bool = Field(False, description="leave silence and noise out of the segments")

    @field_validator("speakers", mode="before")
    @classmethod
    def _known_or_found(cls, value: object) -> object:
        if value is None:  # as if left out: found from the audio
            return -1
        if isinstance(value, bool) or value == 0:  # true is no count of speakers
            raise ValueError("speakers is a positive number, or -1 to find it from the audio")
        return value


class AsyncAccepted(BaseModel):
    request_id: str
    api: str


class JobOutcome(BaseModel):
    request_id: str
    response: dict[str, Any] | None = Field(None, description="what the webhook got (null while running)")


class JobStatus(BaseModel):
    status: Literal["Running", "Completed", "Failed"]
    response: JobOutcome
    progress: float = Field(ge=0.0, le=1.0, description="0 while queued, 1 when done")


class CompatSegment(BaseModel):
    speakerId: str
    start: float
    end: float


# --- diarization (the hosted speaker family) -------------------------------------------------------


class DiarizedSegmentOut(BaseModel):
    speaker_id: str
    start: float
    end: float


class DiarizeResponse(BaseModel):
    num_speakers: int
    segments: list[DiarizedSegmentOut]
