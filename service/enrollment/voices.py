"""A tenant's enrolled voices as enrollment needs them: the decision rule between two voices.
Blocking; thread-safe as the index and scorer are."""

from __future__ import annotations

import numpy as np

from service.enrollment.ports import SpeakerIndex
from service.enrollment.scoring import Scorer


class TenantVoices:
    def __init__(self, scorer: Scorer, index: SpeakerIndex) -> None:
        self.scorer = scorer
        self.index = index

    def score(self, tenant_id: int, vector: np.ndarray, voiceprint: np.ndarray) -> float:
        """The decision rule's score of one voice against one other (as verify scores a clip)."""
        scale = self.scorer.scale(tenant_id, *self.index.cohort(tenant_id))
        return float(self.scorer.scores(vector, voiceprint, scale, gallery=1)[0, 0])
