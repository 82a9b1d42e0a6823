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

from service.audio.band import Band, band_of
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.audio.pipeline import PreparedAudio, QualityLimits
from service.concurrency import Cancellation
from service.enrollment.policy import normalise
from service.enrollment.ports import EmbedWaves, IndexEntry, SpeakerIndex
from service.enrollment.scoring import Scorer
from service.errors import NoEnrolledSpeakers, SpeakerNotFound

# The index is searched for this many nearest speakers by cosine before they are re-scored.
SHORTLIST = 64


@dataclass(frozen=True)
class Thresholds:
    identify: float
    verify: float
    segment: float  # for the short windows of `segments`


@dataclass(frozen=True)
class Candidate:
    speaker_id: str
    score: float
    cosine: float
    complete: bool


@dataclass(frozen=True)
class Identification:
    speaker_id: str | None
    score: float
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


@dataclass(frozen=True)
class SegmentOptions:
    window_s: float = 2.0
    hop_s: float = 0.5
    min_region_s: float = 0.5  # speech regions shorter than this are skipped
    merge_gap_s: float = 1.0  # same-speaker stretches closer than this are joined
    # An "unknown" stretch shorter than this between known speakers is the blur of a speaker change
    # (its windows straddle both voices), not a third voice: it is split between its neighbours.
    min_unknown_s: float = 1.5


class IdentificationService:
    def __init__(
        self,
        frontend: AudioFrontEnd,
        embed: EmbedWaves,
        index: SpeakerIndex,
        scorer: Scorer,
        thresholds: Thresholds,
        limits: QualityLimits,
        segments: SegmentOptions | None = None,
    ) -> None:
        self.frontend = frontend
        self.embed = embed
        self.index = index
        self.scorer = scorer
        self.thresholds = thresholds
        self.limits = limits
        self.options = segments or SegmentOptions()

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
        vector = self._vector(prepared.speech_wave(), cancel)
        band = self._band(prepared)
        ranked = self._rank(vector, tenant_id, only, max(top_k, 1), self._gallery(tenant_id, only), band)
        best = ranked[0]
        accepted = best.score >= self.thresholds.identify
        return Identification(
            speaker_id=best.speaker_id if accepted else None,
            score=round(best.score, 4),
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
        band = self._band(prepared)
        entry = self.index.band(band).lookup(tenant_id, speaker_id) or entry
        cosine = float(entry.centroid @ vector)
        score = float(self._score_matrix(vector[None], [entry], tenant_id, gallery=1, band=band)[0, 0])
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
    ) -> list[Segment]:
        """The clip's speech in time order, each stretch labelled with a speaker or None.

        Overlapping windows over the speech regions are scored against the candidates; each window's
        scores are averaged with its neighbours', labelled, merged into stretches; then each stretch is
        re-scored as a whole (a long stretch gives a surer answer than any of its windows).
        """
        only = self._restriction(tenant_id, speaker_ids)
        prepared = self.frontend.load(audio, self.limits, cancel)
        windows = self._windows(prepared)
        if not windows:
            return []
        # Views into the clip, not copies; the model sees them a bounded batch at a time.
        vectors = self._vectors([prepared.segment(a, b) for a, b in windows], cancel)
        band = self._band(prepared)
        candidates = self._candidates(vectors, tenant_id, only, band)
        gallery = self._gallery(tenant_id, only)
        scores = self._score_matrix(vectors, candidates, tenant_id, gallery, band)  # (windows, candidates)
        smoothed = np.copy(scores)
        for i in range(len(windows)):
            smoothed[i] = scores[max(0, i - 1) : i + 2].mean(axis=0)
        best = smoothed.argmax(axis=1)
        labels = [
            candidates[j].external_id if smoothed[i, j] >= self.thresholds.segment else None
            for i, j in enumerate(best)
        ]
        stretches = self._stretches(windows, labels, prepared.speech)
        return self._confirm(prepared, stretches, candidates, tenant_id, gallery, cancel, band)

    # --- helpers ---------------------------------------------------------------------------------

    def _restriction(self, tenant_id: int, speaker_ids: Sequence[str] | None) -> list[int] | None:
        if not speaker_ids:
            if self.index.tenant_size(tenant_id) == 0:
                raise NoEnrolledSpeakers("This account has no enrolled speakers to identify against")
            return None
        return [self._entry(tenant_id, s).speaker_id for s in dict.fromkeys(speaker_ids)]

    def _entry(self, tenant_id: int, speaker_id: str) -> IndexEntry:
        entry = self.index.lookup(tenant_id, speaker_id)
        if entry is None:
            raise SpeakerNotFound(f"Speaker {speaker_id!r} not found (or has no accepted samples)")
        return entry

    def _band(self, prepared: PreparedAudio) -> Band:
        """The band a clip is scored in: calls against the speakers' narrowband voiceprints."""
        return band_of(prepared.source_rate, prepared.speech_wave())

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
    ) -> list[Candidate]:
        hits = self.index.band(band).search(vector, tenant_id, max(top_k, SHORTLIST), only)
        if not hits:
            raise NoEnrolledSpeakers("No enrolled speakers to identify against")
        scores = self._score_matrix(vector[None], [e for e, _ in hits], tenant_id, gallery, band)[0]
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
        if not found:
            raise NoEnrolledSpeakers("No enrolled speakers to identify against")
        return list(found.values())

    def _score_matrix(
        self,
        vectors: np.ndarray,
        candidates: list[IndexEntry],
        tenant_id: int,
        gallery: int,
        band: Band = Band.WIDE,
    ) -> np.ndarray:
        """``(n, dim)`` clip vectors x candidates (their voiceprints in `band`) -> ``(n,
        len(candidates))`` normalised scores, for clips compared against `gallery` speakers in all,
        on the tenant's cohort of `band`."""
        scale = self.scorer.scale(tenant_id, *self.index.band(band).cohort(tenant_id))
        return self.scorer.scores(vectors, np.stack([c.centroid for c in candidates]), scale, gallery)

    def _windows(self, prepared: PreparedAudio) -> list[tuple[float, float]]:
        o = self.options
        windows = []
        for start, end in prepared.speech:
            if end - start < o.min_region_s:
                continue
            if end - start <= o.window_s:
                windows.append((start, end))
                continue
            t = start
            while t + o.window_s < end:
                windows.append((t, t + o.window_s))
                t += o.hop_s
            windows.append((end - o.window_s, end))
        return windows

    def _stretches(
        self,
        windows: list[tuple[float, float]],
        labels: list[str | None],
        speech: list[tuple[float, float]],
    ) -> list[Segment]:
        """Give each window the time around its centre, clip to speech, merge equal neighbours."""
        half = self.options.hop_s / 2
        pieces: list[Segment] = []
        for (a, b), label in zip(windows, labels, strict=True):
            centre = (a + b) / 2
            region = next(r for r in speech if r[0] <= centre <= r[1])
            start = region[0] if a == region[0] else max(region[0], centre - half)
            end = region[1] if b == region[1] else min(region[1], centre + half)
            pieces.append(Segment(label, start, end))
        merged: list[Segment] = []
        for piece in sorted(pieces, key=lambda p: p.start):
            last = merged[-1] if merged else None
            if (
                last is not None
                and last.speaker_id == piece.speaker_id
                and piece.start - last.end <= self.options.merge_gap_s
            ):
                merged[-1] = Segment(last.speaker_id, last.start, max(last.end, piece.end))
            elif last is not None and piece.start < last.end:
                merged.append(Segment(piece.speaker_id, last.end, piece.end))
            else:
                merged.append(piece)
        return [m for m in merged if m.end > m.start]

    def _confirm(
        self,
        prepared: PreparedAudio,
        stretches: list[Segment],
        candidates: list[IndexEntry],
        tenant_id: int,
        gallery: int,
        cancel: Cancellation | None,
        band: Band = Band.WIDE,
    ) -> list[Segment]:
        """Re-score each stretch as a whole with the clip-level threshold; merge again after."""
        if not stretches:
            return []
        vectors = self._vectors([prepared.segment(s.start, s.end) for s in stretches], cancel)
        scores = self._score_matrix(vectors, candidates, tenant_id, gallery, band)
        out: list[Segment] = []
        for stretch, row in zip(stretches, scores, strict=True):
            j = int(row.argmax())
            threshold = (
                self.thresholds.identify if stretch.end - stretch.start >= 3.0 else self.thresholds.segment
            )
            label = candidates[j].external_id if row[j] >= threshold else None
            if (
                out
                and out[-1].speaker_id == label
                and stretch.start - out[-1].end <= self.options.merge_gap_s
            ):
                out[-1] = Segment(label, out[-1].start, stretch.end)
            else:
                out.append(Segment(label, round(stretch.start, 2), round(stretch.end, 2)))
        return [Segment(s.speaker_id, round(s.start, 2), round(s.end, 2)) for s in self._absorb_blurs(out)]

    def _absorb_blurs(self, stretches: list[Segment]) -> list[Segment]:
        out = list(stretches)
        i = 1
        while i < len(out) - 1:
            left, blur, right = out[i - 1], out[i], out[i + 1]
            if (
                blur.speaker_id is None
                and left.speaker_id is not None
                and right.speaker_id is not None
                and blur.end - blur.start < self.options.min_unknown_s
            ):
                middle = (blur.start + blur.end) / 2
                out[i - 1 : i + 2] = [Segment(left.speaker_id, left.start, middle)] + (
                    [Segment(right.speaker_id, middle, right.end)]
                    if right.speaker_id != left.speaker_id
                    else []
                )
                if right.speaker_id == left.speaker_id:
                    out[i - 1] = Segment(left.speaker_id, left.start, right.end)
                continue
            i += 1
        return out
