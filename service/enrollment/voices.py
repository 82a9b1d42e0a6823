"""A tenant's enrolled voices as enrollment needs them: the decision rule between two voices, and
the speakers whose voiceprints lie nearest a vector (from the index, so a check costs a search and
never a read of every sample of the tenant). Blocking; thread-safe as the index and scorer are."""

from __future__ import annotations

import numpy as np

from service.audio import Band
from service.enrollment.ports import IndexEntry, SpeakerIndex
from service.enrollment.scoring import Scorer

# Speakers nearest a voiceprint that are scored for "very close to another speaker".
NEIGHBOURS = 8


class TenantVoices:
    def __init__(self, scorer: Scorer, index: SpeakerIndex) -> None:
        self.scorer = scorer
        self.index = index

    def score(
        self,
        tenant_id: int,
        vector: np.ndarray,
        voiceprint: np.ndarray,
        band: Band = Band.WIDE,
        seconds: float | None = None,
    ) -> float:
        """The decision rule's score of one voice against one other (as verify scores a clip), on
        the tenant's cohort of `band` (the band `vector` was heard through); `seconds`: the speech
        behind `vector`, if known (the duration term)."""
        scale = self.scorer.scale(tenant_id, *self.index.band(band).cohort(tenant_id))
        return float(self.scorer.scores(vector, voiceprint, scale, gallery=1, seconds=seconds)[0, 0])

    def nearest(self, tenant_id: int, vector: np.ndarray, k: int) -> list[tuple[IndexEntry, float]]:
        """The tenant's `k` speakers whose voiceprints have the highest cosine to `vector`."""
        return self.index.search(vector, tenant_id, k)

    def closest_other(self, tenant_id: int, speaker_row: int, voiceprint: np.ndarray) -> float | None:
        """The highest score of `voiceprint` against another speaker's of the tenant, as identify
        scores a clip against the whole tenant; None when the tenant has no other speaker."""
        size = self.index.tenant_size(tenant_id)
        others = [
            e
            for e, _ in self.index.search(voiceprint, tenant_id, NEIGHBOURS + 1)
            if e.speaker_id != speaker_row
        ]
        if not others:
            return None
        scale = self.scorer.scale(tenant_id, *self.index.cohort(tenant_id))
        scores = self.scorer.scores(voiceprint, np.stack([e.centroid for e in others]), scale, gallery=size)
        return float(scores.max())
