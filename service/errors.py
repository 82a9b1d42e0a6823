"""One error hierarchy for the whole service.

Every failure a client can cause is a `ServiceError` subclass carrying a stable error code and an
HTTP status. One handler (`service.api.errors`) renders them: in the hosted API's fault shape on the
DeepAffects-compatible routes, as ``{"error": {"code", "message"}}`` on the native routes.
"""

from __future__ import annotations

from typing import ClassVar

from service.enrollment import speaker_ids

SHOWN_CHARS = 40


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A client's value as an error message may quote it: printable characters only, at most
    `limit` of them (a 100 KB "encoding" comes back as its first few characters and "...")."""
    text = "".join(c for c in str(value)[: limit * 4] if c.isprintable())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ServiceError(Exception):
    """Base class: `code` is stable and machine-readable, `message` is for humans."""

    code: ClassVar[str] = "service.Error"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


# --- request shape -------------------------------------------------------------------------------


class BadRequest(ServiceError):
    code = "request.Invalid"
    status = 400
    default_message = "Invalid request"


class InvalidSpeakerId(BadRequest):
    code = "request.InvalidSpeakerId"
    default_message = (
        f"speakerId must be 1 to {speaker_ids.MAX_LENGTH} characters of [{speaker_ids.ALLOWED}], not "
        "dots alone ('.' and '..' are path segments in a URL)"
    )


class RouteNotFound(ServiceError):
    code = "request.NotFound"
    status = 404
    default_message = "Not Found"


class MethodNotAllowed(ServiceError):
    code = "request.MethodNotAllowed"
    status = 405
    default_message = "Method Not Allowed"


class RequestTimeout(ServiceError):
    code = "request.Timeout"
    status = 408
    default_message = "The request was not received in time"


class PayloadTooLarge(ServiceError):
    code = "request.PayloadTooLarge"
    status = 413
    default_message = "Request body is too large"


class UnsupportedMediaType(ServiceError):
    code = "request.UnsupportedMediaType"
    status = 415
    default_message = "Unsupported content type"


class RequestCancelled(ServiceError):
    """The client went away before the answer; its work stopped early. 499 is nginx's "client closed
    request": nobody reads the answer, the status is for logs and metrics."""

    code = "request.Cancelled"
    status = 499
    default_message = "The client closed the request before the answer"


# --- auth ----------------------------------------------------------------------------------------


class Unauthorized(ServiceError):
    code = "auth.InvalidKey"
    status = 401
    default_message = "Missing or invalid API key"
    MISSING: ClassVar[str] = "An API key is required (apikey query parameter, X-API-Key, or Bearer)"
    # RFC 9110: a 401 names how to authenticate (the key also works as `apikey` or `X-API-Key`).
    CHALLENGE: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="speakerid"'}

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={**self.CHALLENGE, **(headers or {})})


class Forbidden(ServiceError):
    code = "auth.Forbidden"
    status = 403
    default_message = "Not allowed from this client"


class RateLimited(ServiceError):
    code = "request.RateLimited"
    status = 429
    default_message = "Too many requests"


class Overloaded(ServiceError):
    code = "service.Overloaded"
    status = 429
    default_message = "The embedding queue is full; retry shortly"


# --- audio ---------------------------------------------------------------------------------------


class AudioError(ServiceError):
    code = "audio.Invalid"
    status = 400
    default_message = "Invalid audio"


class InvalidBase64(AudioError):
    code = "audio.InvalidBase64"
    default_message = "content is not valid base64"


class EmptyAudio(AudioError):
    code = "audio.Empty"
    default_message = "Audio content is empty"


class UnsupportedEncoding(AudioError):
    code = "audio.UnsupportedEncoding"
    default_message = "Unsupported audio encoding"


class MissingSampleRate(AudioError):
    code = "audio.MissingSampleRate"
    default_message = "sampleRate is required for raw audio encodings"


class UndecodableAudio(AudioError):
    code = "audio.Undecodable"
    default_message = "Audio could not be decoded with the stated encoding"


class TooManyChannels(AudioError):
    code = "audio.TooManyChannels"
    default_message = "Audio has more channels than are accepted"


class AudioTooLong(AudioError):
    code = "audio.TooLong"
    status = 413
    default_message = "Audio is longer than the allowed duration"


class InsufficientSpeech(AudioError):
    code = "audio.InsufficientSpeech"
    status = 422
    default_message = "Insufficient speech content in audio"


class ClippedAudio(AudioError):
    code = "audio.Clipped"
    status = 422
    default_message = "Audio is clipped too much"


class NoisyAudio(AudioError):
    code = "audio.TooNoisy"
    status = 422
    default_message = "Audio is too noisy"


class NoSpeakerVector(AudioError):
    """The model's vector for the clip is zero or not finite: there is no direction to compare."""

    code = "audio.NoSpeakerVector"
    status = 422
    default_message = "No usable speaker vector could be computed from this audio"


class MultipleSpeakers(AudioError):
    code = "audio.MultipleSpeakers"
    status = 422
    default_message = "The channels of this clip hold different voices"


# --- enrollment and identification ---------------------------------------------------------------


class SpeakerNotFound(ServiceError):
    code = "speaker.NotFound"
    status = 404
    default_message = "Speaker not found"


class SampleNotFound(ServiceError):
    code = "sample.NotFound"
    status = 404
    default_message = "Sample not found"


class DuplicateSample(ServiceError):
    code = "enrollment.DuplicateSample"
    status = 409
    default_message = "This sample is a near-copy of one the speaker already has"


class DuplicateRecording(ServiceError):
    code = "enrollment.DuplicateRecording"
    status = 409
    default_message = "This recording is already enrolled for another speaker of this account"


class SpeakerMismatch(ServiceError):
    code = "enrollment.SpeakerMismatch"
    status = 409
    default_message = "This sample does not sound like the speaker's earlier samples"


# --- async jobs and outbound connections --------------------------------------------------------


class JobNotFound(ServiceError):
    code = "job.NotFound"
    status = 404
    default_message = "No job with this request_id"


class DuplicateRequestId(ServiceError):
    code = "job.DuplicateRequestId"
    status = 409
    default_message = "A job with this request_id exists"


class EgressRefused(BadRequest):
    code = "egress.Refused"
    default_message = "Connections to this address are not allowed (SPK_EGRESS__ALLOWED_HOSTS)"


class FetchFailed(AudioError):
    code = "audio.FetchFailed"
    default_message = "The audio could not be fetched from url"


# --- realtime streams ----------------------------------------------------------------------------


class TooManyStreams(ServiceError):
    code = "realtime.TooManyStreams"
    status = 429
    default_message = "Too many streams open for this API key"


class StreamIdle(ServiceError):
    code = "realtime.Idle"
    status = 408
    default_message = "The stream sent nothing for too long"


# --- service state -------------------------------------------------------------------------------


class NotReady(ServiceError):
    code = "service.NotReady"
    status = 503
    default_message = "Service is not ready"


class DatabaseUnavailable(ServiceError):
    """The database did not answer in time (down, cut off, or a lock held past its timeout)."""

    code = "service.DatabaseUnavailable"
    status = 503
    default_message = "The database is not answering; retry shortly"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "5", **(headers or {})})


class FrontEndLost(ServiceError):
    """The process preparing the request's audio died or hung; it was replaced."""

    code = "service.Unavailable"
    status = 503
    default_message = "The audio worker handling this request failed; retry"


class StartupError(RuntimeError):
    """Raised at start-up (not per request): the message says how to fix it."""
