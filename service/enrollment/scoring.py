"""How a clip is scored against speakers: cosine after removing the tenant's domain mean.

Plain cosine to a speaker's centroid is the baseline. A recording channel adds a shared offset to
every embedding made through it (8 kHz telephone speech pushes genuine and impostor cosines up
alike), so a threshold tuned on 16 kHz speech accepts telephone impostors. Subtracting the mean of
the tenant's enrolled centroids, which carry that channel too, removes the offset before the cosine
is taken; the mean is shrunk towards a prior (the mean of the model's 7,205 training-speaker
prototypes) so that a tenant with few speakers is not centred on those few voices:

    mu = (n * mean(tenant centroids) + k * prior) / (n + k)
    score = cos(q - mu, c - mu)

Measured on ../shared/eval-speech (see `service/calibration.py`), this beat plain cosine at 8 kHz and
matched it at 16 kHz; adaptive s-norm against the prototypes did not remove the 8 kHz shift (both
its genuine and impostor scores rose by about 5 units), so it was not kept.
"""

from __future__ import annotations

import numpy as np


class Scorer:
    def __init__(self, prior_mean: np.ndarray, prior_weight: float, centring: bool = True) -> None:
        self.prior = np.asarray(prior_mean, dtype=np.float32)
        self.prior_weight = prior_weight
        self.centring = centring

    def mean(self, tenant_sum: np.ndarray, tenant_count: int) -> np.ndarray:
        """The shrunk domain mean for a tenant whose centroids sum to `tenant_sum`."""
        return ((tenant_sum + self.prior_weight * self.prior) / (tenant_count + self.prior_weight)).astype(
            np.float32
        )

    def scores(self, queries: np.ndarray, centroids: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """``(n, dim)`` normalised clip vectors x ``(m, dim)`` normalised centroids -> ``(n, m)``."""
        if not self.centring:
            return np.atleast_2d(queries) @ np.atleast_2d(centroids).T
        return _unit(np.atleast_2d(queries) - mean) @ _unit(np.atleast_2d(centroids) - mean).T


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-8)
