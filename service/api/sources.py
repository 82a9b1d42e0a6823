"""Where a request's audio comes from: its `content` (base64) or a `url` to fetch."""

from __future__ import annotations

from service.api.schemas import DiarizeRequest
from service.audio.decode import b64decode
from service.audio.frontend import AudioInput
from service.errors import BadRequest


def audio_source(body: DiarizeRequest) -> AudioInput:
    """The audio of a body that names it by `content` or `url` (exactly one of them)."""
    if (body.content is None) == (body.url is None):
        raise BadRequest("Give exactly one of content (base64 audio) and url")
    if body.url is not None:
        raise BadRequest("url input is not enabled on this server; send the audio as content")
    return AudioInput(data=b64decode(body.content or ""), encoding=body.encoding, sample_rate=body.sampleRate)
