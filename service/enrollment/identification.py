"""Identification use cases: who is speaking (open-set), is this that speaker, and who speaks when.

Every speaker of the tenant with at least one accepted sample is a candidate; a candidate whose
enrollment is not complete says so and apps decide. Unknown voices are rejected by threshold, never
forced onto the nearest enrolled speaker. Scores are the decision rule's normalised units
(`service.enrollment.scoring`), with the plain cosine beside them. Blocking: call from a worker
thread. Audio of any length costs bounded memory (`embed` makes model calls of bounded size), and a
`cancel` set while the work runs stops it before its next model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.audio import Band
from service.audio.band import clip_band
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.audio.pipeline import QualityLimits
from service.concurrency import Cancellation
from service.diarization.turns import SpanVectors, TurnOptions, find_turns, in_centiseconds
from service.enrollment.policy import normalise
from service.enrollment.ports import EmbedWaves, IndexEntry, SpeakerIndex
from service.enrollment.scoring import Scorer
from service.errors import SpeakerNotFound

# The index is searched for this many nearest speakers by cosine before they are re-scored.
SHORTLIST = 64


@dataclass(frozen=True)
class Thresholds:
    identify: float
    verify: float


@dataclass(frozen=True)
class Candidate:
    speaker_id: str
    score: float
    cosine: float
    complete: bool


@dataclass(frozen=True)
class Identification:
    speaker_id: str | None
    score: float | None  # None: the tenant has no enrolled speaker to compare the clip with
    threshold: float
    candidates: list[Candidate]
    speech_seconds: float
    channel: Band = Band.WIDE  # the band the clip was scored in


@dataclass(frozen=True)
class Verification:
    match: bool
    score: float
    threshold: float
    cosine: float
    complete: bool
    speech_seconds: float
    channel: Band = Band.WIDE


@dataclass(frozen=True)
class Segment:
    speaker_id: str | None  # None: speech of no enrolled speaker (among the candidates)
    start: float
    end: float
    # The decision rule's score of the stretch's voice against `speaker_id`; for None, against the
    # voice's best candidate (below the threshold, or taken by a voice that scored higher), or
    # None when there was no candidate at all (a tenant with no enrolled speaker).
    score: float | None
    # For None: the best candidate that `score` is against (a stream holds a voice by it).
    candidate: str | None = None


class IdentificationService:
    def __init__(
        self,
        frontend: AudioFrontEnd,
        embed: EmbedWaves,
        index: SpeakerIndex,
        scorer: Scorer,
        thresholds: Thresholds,
        limits: QualityLimits,
        turns: TurnOptions | None = None,
        max_voices: int = 10,
        merge_gap_s: float = 1.0,
    ) -> None:
        self.frontend = frontend
        self.embed = embed
        self.index = index
        self.scorer = scorer
        self.thresholds = thresholds
        self.limits = limits
        self.turn_options = turns or TurnOptions()
        self.max_voices = max_voices
        # One label's stretches closer than this are one segment (a pause within a turn).
        self.merge_gap_s = merge_gap_s

    # --- use cases -------------------------------------------------------------------------------

    def identify(
        self,
        tenant_id: int,
        audio: AudioInput,
        speaker_ids: Sequence[str] | None = None,
        top_k: int = 5,
        cancel: Cancellation | None = None,
    ) -> Identification:
        only = self._restriction(tenant_id, speaker_ids)
        prepared = self.frontend.load(audio, self.limits, cancel)
        band = clip_band(prepared)
        if only == []:  # no one enrolled: every voice is unknown, and the model is not needed
            return Identification(
                None, None, self.thresholds.identify, [], round(prepared.speech_seconds, 2), band
            )
        vector = self._vector(prepared.speech_wave(), cancel)
        ranked = self._rank(
            vector,
            tenant_id,
            only,
            max(top_k, 1),
            self._gallery(tenant_id, only),
            band,
            prepared.speech_seconds,
        )
        best = ranked[0] if ranked else None
        accepted = best is not None and best.score >= self.thresholds.identify
        return Identification(
            speaker_id=best.speaker_id if best is not None and accepted else None,
            score=round(best.score, 4) if best is not None else None,
            threshold=self.thresholds.identify,
            candidates=ranked[:top_k],
            speech_seconds=round(prepared.speech_seconds, 2),
            channel=band,
        )

    def verify(
        self, tenant_id: int, audio: AudioInput, speaker_id: str, cancel: Cancellation | None = None
    ) -> Verification:
        entry = self._entry(tenant_id, speaker_id)
        prepared = self.frontend.load(audio, self.limits, cancel)
        vector = self._vector(prepared.speech_wave(), cancel)
        band = clip_band(prepared)
        entry = self.index.band(band).lookup(tenant_id, speaker_id) or entry
        cosine = float(entry.centroid @ vector)
        score = float(
            self._score_matrix(vector[None], [entry], tenant_id, 1, band, prepared.speech_seconds)[0, 0]
        )
        return Verification(
            match=score >= self.thresholds.verify,
            score=round(score, 4),
            threshold=self.thresholds.verify,
            cosine=round(cosine, 4),
            complete=entry.complete,
            speech_seconds=round(prepared.speech_seconds, 2),
            channel=band,
        )

    def segments(
        self,
        tenant_id: int,
        audio: AudioInput,
        speaker_ids: Sequence[str] | None = None,
        cancel: Cancellation | None = None,
        known: SpanVectors | None = None,
        turns: TurnOptions | None = None,
    ) -> list[Segment]:
        """The clip's speech in time order, each stretch labelled with a speaker or None.

        The turns come from the diarization machinery (`service.diarization.turns`: voices found by
        clustering short windows, boundaries from frame-level likeness, each stretch re-scored whole);
        each voice, from all of its speech, is then labelled by the identify rule (`label`).
        `known`: a stream's vectors of audio it scored before (`find_turns`); `turns`: options other
        than the service's (a stream's window).
        """
        only = self._restriction(tenant_id, speaker_ids)
        prepared = self.frontend.load(audio, self.limits, cancel)
        found = find_turns(
            prepared,
            self.embed,
            turns or self.turn_options,
            max_count=self.max_voices,
            cancel=cancel,
            known=known,
        )
        if not found.turns:
            return []
        band = clip_band(prepared)
        labels, scores, best = self._voice_decisions(found.voices, tenant_id, only, band, found.seconds)
        out: list[Segment] = []
        for turn in found.turns:
            label, score = labels[turn.voice], scores[turn.voice]
            candidate = best[turn.voice] if label is None else None
            if out and out[-1].speaker_id == label and turn.start - out[-1].end <= self.merge_gap_s:
                # Two voices share a segment only as None: the nearer to being someone speaks for it.
                last = out[-1]
                if score is not None and (last.score is None or score > last.score):
                    last = Segment(label, last.start, last.end, score, candidate)
                out[-1] = Segment(label, last.start, turn.end, last.score, last.candidate)
            else:
                out.append(Segment(label, turn.start, turn.end, score, candidate))
        return [
            Segment(
                s.speaker_id,
                *in_centiseconds(s.start, s.end, prepared.duration_s),
                None if s.score is None else round(s.score, 4),
                s.candidate,
            )
            for s in out
        ]

    def check(self, tenant_id: int, speaker_ids: Sequence[str]) -> None:
        """Raise SpeakerNotFound unless every id names a speaker of the tenant with samples."""
        self._restriction(tenant_id, speaker_ids)

    def label(
        self,
        tenant_id: int,
        voices: np.ndarray,
        speaker_ids: Sequence[str] | None,
        band: Band = Band.WIDE,
        seconds: np.ndarray | None = None,
    ) -> list[str | None]:
        """The enrolled id each voice ``(k, dim)`` (unit vectors, each from all of one voice's speech,
        heard in `band`; `seconds` ``(k,)``: each voice's speech, if known) is accepted as by the
        identify rule, among `speaker_ids` (all the tenant's speakers if none); None for a voice no
        one is accepted for. An id goes to one voice at most, the best first."""
        only = self._restriction(tenant_id, speaker_ids)
        return self._voice_decisions(voices, tenant_id, only, band, seconds)[0]

    # --- helpers ---------------------------------------------------------------------------------

    def _restriction(self, tenant_id: int, speaker_ids: Sequence[str] | None) -> list[int] | None:
        """The speakers a clip is compared with: those of `speaker_ids` (SpeakerNotFound for an id
        the tenant lacks), or None for all the tenant's; [] when it has none (every voice unknown)."""
        if not speaker_ids:
            return [] if self.index.tenant_size(tenant_id) == 0 else None
        return [self._entry(tenant_id, s).speaker_id for s in dict.fromkeys(speaker_ids)]

    def _entry(self, tenant_id: int, speaker_id: str) -> IndexEntry:
        entry = self.index.lookup(tenant_id, speaker_id)
        if entry is None:
            raise SpeakerNotFound(f"Speaker {speaker_id!r} not found (or has no accepted samples)")
        return entry

    def _vector(self, wave: np.ndarray, cancel: Cancellation | None) -> np.ndarray:
        return np.asarray(self._vectors([wave], cancel)[0])

    def _vectors(self, waves: Sequence[np.ndarray], cancel: Cancellation | None) -> np.ndarray:
        raw = self.embed(waves, cancel)
        return np.stack([normalise(v) for v in raw])

    def _gallery(self, tenant_id: int, only: list[int] | None) -> int:
        """How many speakers a clip is compared against: the level of the decision rule grows with it."""
        return len(only) if only is not None else self.index.tenant_size(tenant_id)

    def _rank(
        self,
        vector: np.ndarray,
        tenant_id: int,
        only: list[int] | None,
        top_k: int,
        gallery: int,
        band: Band = Band.WIDE,
        seconds: float | None = None,
    ) -> list[Candidate]:
        hits = self.index.band(band).search(vector, tenant_id, max(top_k, SHORTLIST), only)
        if not hits:  # the tenant's last speaker deleted meanwhile
            return []
        scores = self._score_matrix(vector[None], [e for e, _ in hits], tenant_id, gallery, band, seconds)[0]
        ranked = [
            Candidate(e.external_id, round(float(score), 4), round(c, 4), e.complete)
            for (e, c), score in zip(hits, scores, strict=True)
        ]
        return sorted(ranked, key=lambda c: c.score, reverse=True)

    def _candidates(
        self, vectors: np.ndarray, tenant_id: int, only: list[int] | None, band: Band = Band.WIDE
    ) -> list[IndexEntry]:
        found: dict[int, IndexEntry] = {}
        for vector in vectors:
            for entry, _ in self.index.band(band).search(vector, tenant_id, 8, only):
                found[entry.speaker_id] = entry
        return list(found.values())

    def _score_matrix(
        self,
        vectors: np.ndarray,
        candidates: list[IndexEntry],
        tenant_id: int,
        gallery: int,
        band: Band = Band.WIDE,
        seconds: float | np.ndarray | None = None,
    ) -> np.ndarray:
        """``(n, dim)`` clip vectors x candidates (their voiceprints in `band`) -> ``(n,
        len(candidates))`` normalised scores, for clips compared against `gallery` speakers in all,
        on the tenant's cohort of `band`; `seconds`: the clips' speech (the duration term)."""
        scale = self.scorer.scale(tenant_id, *self.index.band(band).cohort(tenant_id))
        centroids = np.stack([c.centroid for c in candidates])
        return self.scorer.scores(vectors, centroids, scale, gallery, seconds)

    def _voice_decisions(
        self,
        voices: np.ndarray,
        tenant_id: int,
        only: list[int] | None,
        band: Band,
        seconds: np.ndarray | None = None,
    ) -> tuple[list[str | None], list[float | None], list[str | None]]:
        """Each voice's label (as `label`), its score against that speaker, or against its best
        candidate when it has none (None when there is no candidate), and that best candidate."""
        candidates = self._candidates(voices, tenant_id, only, band)
        if not candidates:  # no one enrolled (or no one left)
            return [None] * len(voices), [None] * len(voices), [None] * len(voices)
        gallery = self._gallery(tenant_id, only)
        scores = self._score_matrix(voices, candidates, tenant_id, gallery, band, seconds)
        labels: list[str | None] = [None] * len(voices)
        taken: set[int] = set()
        for flat in np.argsort(-scores, axis=None):
            i, j = divmod(int(flat), len(candidates))
            if scores[i, j] < self.thresholds.identify:
                break
            if labels[i] is None and j not in taken:
                labels[i] = candidates[j].external_id
                taken.add(j)
        named = {c.external_id: j for j, c in enumerate(candidates)}
        best = scores.max(axis=1)
        top: list[str | None] = [candidates[int(j)].external_id for j in scores.argmax(axis=1)]
        return (
            labels,
            [float(best[i] if label is None else scores[i, named[label]]) for i, label in enumerate(labels)],
            top,
        )
