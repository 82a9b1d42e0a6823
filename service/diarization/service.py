"""The diarization use case: who speaks when in a clip, without enrollment.

Voices are found from the audio (`service.diarization.turns`); a voice that matches one of the
`speaker_ids` given, by the decision rule identify uses (open-set, each id to one voice at most),
carries that id, the others are ``speaker_1``, ``speaker_2``, ... in order of first appearance.
Blocking: call from a worker thread; a `cancel` set meanwhile stops it before its next model call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.audio import Band
from service.audio.band import clip_band
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.audio.pipeline import PreparedAudio, QualityLimits
from service.concurrency import Cancellation
from service.diarization.turns import TurnOptions, Turns, find_turns, in_centiseconds
from service.enrollment.ports import EmbedWaves

# Most voices looked for when the count is not given, by the hosted API's `audioType` hint.
MAX_SPEAKERS = {"callcenter": 6, "meeting": 20}
DEFAULT_MAX_SPEAKERS = 10


def max_speakers_for(audio_type: str | None) -> int:
    return MAX_SPEAKERS.get((audio_type or "").strip().lower(), DEFAULT_MAX_SPEAKERS)


class VoiceLabels(Protocol):
    """Enrolled ids for voices found in a clip, by the identify decision rule."""

    def check(self, tenant_id: int, speaker_ids: Sequence[str]) -> None:
        """Raise SpeakerNotFound for an id the tenant has no speaker (with samples) for."""

    def label(
        self,
        tenant_id: int,
        voices: np.ndarray,
        speaker_ids: Sequence[str] | None,
        band: Band,
        seconds: np.ndarray | None = None,
    ) -> list[str | None]:
        """For each voice vector ``(k, dim)`` heard in `band` (with `seconds` ``(k,)`` of speech): the
        id it is accepted as, or None; an id at most once."""


@dataclass(frozen=True)
class DiarizedSegment:
    speaker_id: str
    start: float  # seconds from the clip's start, 2 decimals
    end: float


@dataclass(frozen=True)
class DiarizationResult:
    num_speakers: int
    segments: list[DiarizedSegment]


class DiarizationService:
    def __init__(
        self,
        frontend: AudioFrontEnd,
        embed: EmbedWaves,
        labels: VoiceLabels | None,
        limits: QualityLimits,
        options: TurnOptions | None = None,
    ) -> None:
        self.frontend = frontend
        self.embed = embed
        self.labels = labels
        self.limits = limits
        self.options = options or TurnOptions()

    def diarize(
        self,
        tenant_id: int,
        audio: AudioInput | PreparedAudio,
        speakers: int | None = None,
        speaker_ids: Sequence[str] | None = None,
        do_vad: bool = False,
        max_speakers: int = DEFAULT_MAX_SPEAKERS,
        cancel: Cancellation | None = None,
    ) -> DiarizationResult:
        """`speakers` voices if given (None or -1: found, at most `max_speakers`). With `do_vad`
        every pause is left out of the segments; without, one voice's consecutive turns are one
        segment (its pauses included) and only the silence between different voices is left out."""
        if speaker_ids and self.labels is not None:
            self.labels.check(tenant_id, speaker_ids)
        prepared = (
            audio if isinstance(audio, PreparedAudio) else self.frontend.load(audio, self.limits, cancel)
        )
        count = speakers if speakers is not None and speakers > 0 else None
        found = find_turns(
            prepared, self.embed, self.options, count=count, max_count=max_speakers, cancel=cancel
        )
        names = self._names(tenant_id, found, speaker_ids, clip_band(prepared))
        segments = segments_of(found, names, join_pauses=not do_vad, duration_s=prepared.duration_s)
        return DiarizationResult(num_speakers=len({s.speaker_id for s in segments}), segments=segments)

    def _names(
        self, tenant_id: int, found: Turns, speaker_ids: Sequence[str] | None, band: Band
    ) -> list[str]:
        known: list[str | None] = [None] * found.count
        if speaker_ids and self.labels is not None and found.count:
            known = self.labels.label(tenant_id, found.voices, speaker_ids, band, found.seconds)
        names, n = [], 0
        for k in known:
            if k is None:
                n += 1
            names.append(k if k is not None else f"speaker_{n}")
        return names


def segments_of(
    found: Turns, names: Sequence[str], *, join_pauses: bool, duration_s: float = math.inf
) -> list[DiarizedSegment]:
    """The turns as named segments, in time order; a voice's turns that follow each other are joined
    (across pauses, with `join_pauses`), times to 10 ms within the clip's `duration_s`."""
    out: list[DiarizedSegment] = []
    for t in found.turns:
        name = names[t.voice]
        last = out[-1] if out else None
        if last is not None and last.speaker_id == name and (join_pauses or t.start - last.end <= 1e-6):
            out[-1] = DiarizedSegment(name, last.start, t.end)
        else:
            out.append(DiarizedSegment(name, t.start, t.end))
    return [DiarizedSegment(s.speaker_id, *in_centiseconds(s.start, s.end, duration_s)) for s in out]
