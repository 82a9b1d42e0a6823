"""The audio front end the use cases call: bytes of a stated encoding in, checked speech out."""

from __future__ import annotations

from dataclasses import dataclass

from service.audio.decode import decode
from service.audio.pipeline import PreparedAudio, QualityLimits, SpeechDetector, prepare


@dataclass(frozen=True)
class AudioInput:
    """One clip as a client sent it. `sample_rate` matters only for raw encodings."""

    data: bytes
    encoding: str
    sample_rate: int | None = None


class AudioFrontEnd:
    def __init__(self, *, max_seconds: float, decode_timeout_s: float, vad_threshold: float) -> None:
        self.max_seconds = max_seconds
        self.decode_timeout_s = decode_timeout_s
        self.detector = SpeechDetector(vad_threshold)

    def load(self, audio: AudioInput, limits: QualityLimits | None = None) -> PreparedAudio:
        """Decode, convert to 16 kHz mono, find speech; raise a 4xx error if `limits` fail."""
        decoded = decode(
            audio.data,
            audio.encoding,
            audio.sample_rate,
            max_seconds=self.max_seconds,
            timeout_s=self.decode_timeout_s,
        )
        prepared = prepare(decoded, self.detector)
        if limits is not None:
            prepared.check(limits)
        return prepared
