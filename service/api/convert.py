"""Between HTTP bodies and use-case types."""

from __future__ import annotations

from service.api.deps import run_blocking
from service.api.schemas import AudioFields, EnrollmentStatusOut, LastSample, RemoteAudioFields
from service.audio.decode import b64decode
from service.audio.frontend import AudioInput
from service.config import Settings
from service.egress import url_egress
from service.enrollment.service import EnrollmentStatus


def audio_input(body: AudioFields) -> AudioInput:
    return AudioInput(data=b64decode(body.content), encoding=body.encoding, sample_rate=body.sampleRate)


async def remote_audio_input(body: RemoteAudioFields, settings: Settings) -> AudioInput:
    """`audio_input`, or the audio fetched from the body's `url` under the egress rule."""
    if body.url is None:
        return audio_input(body)
    fetch = url_egress(settings.egress).fetch
    data = await run_blocking(
        lambda: fetch(
            body.url or "",
            max_bytes=settings.audio.max_request_bytes,
            timeout_s=settings.egress.fetch_timeout_s,
        )
    )
    return AudioInput(data=data, encoding=body.encoding, sample_rate=body.sampleRate)


def status_out(status: EnrollmentStatus) -> EnrollmentStatusOut:
    last = status.last_sample
    return EnrollmentStatusOut(
        speakerId=status.speaker_id,
        status=status.status,
        samples=status.samples,
        speechSeconds=status.speech_seconds,
        spread=status.spread,
        progress=status.progress,
        missing=status.missing,
        lastSample=LastSample(sampleId=last.sample_id, speechSeconds=last.speech_seconds, snrDb=last.snr_db)
        if last
        else None,
        warnings=status.warnings,
    )


# Content-Type of a raw-body upload -> encoding name understood by the decoder.
MEDIA_TYPES = {
    "audio/flac": "FLAC",
    "audio/x-flac": "FLAC",
    "audio/wav": "WAV",
    "audio/wave": "WAV",
    "audio/x-wav": "WAV",
    "audio/vnd.wave": "WAV",
    "audio/mpeg": "MP3",
    "audio/mp3": "MP3",
    "audio/ogg": "OGG",
    "audio/opus": "OGG_OPUS",
    "audio/webm": "WEBM",
    "audio/mp4": "M4A",
    "audio/m4a": "M4A",
    "audio/x-m4a": "M4A",
    "audio/aac": "AAC",
    "audio/amr": "AMR",
    "audio/amr-wb": "AMR_WB",
    "audio/basic": "MULAW",
    "audio/pcmu": "MULAW",
    "audio/pcma": "ALAW",
    "audio/l16": "PCM_S16BE",  # RFC 2586 / 3551: big-endian, `rate=` and `channels=` parameters
}


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """`audio/L16; rate=8000` -> ("audio/l16", {"rate": "8000"})."""
    kind, *rest = content_type.split(";")
    params = {}
    for part in rest:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def encoding_for(content_type: str) -> str | None:
    """The encoding a raw body's Content-Type names; "" (recognised from the bytes) for
    application/octet-stream and audio types without a name of their own; None for non-audio."""
    kind, _ = media_type(content_type)
    if kind in MEDIA_TYPES:
        return MEDIA_TYPES[kind]
    if kind.startswith("audio/") or kind == "application/octet-stream":
        return ""
    return None
