"""Grouping speaker vectors (of windows, or of whole stretches) by voice, the count found or given.

Average-linkage agglomerative clustering on cosine distance, stopped where the closest two groups
are further apart than a calibrated distance (`service.calibration`, DIARIZATION_*), then refined:
every vector moves to the group whose centroid it is closest to (the tree's early merges are never
undone otherwise), and a group with too little speech to be a voice (a moment of overlap, a cough)
is handed to the nearest real one. Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from service.enrollment.scoring import unit_rows

REFINE_ROUNDS = 5


def centroids(vectors: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Unit-length weighted mean of the `vectors` ``(n, dim)`` of each label ``0..k-1`` -> ``(k, dim)``."""
    w = np.ones(len(vectors)) if weights is None else weights
    k = int(labels.max()) + 1
    sums = np.zeros((k, vectors.shape[1]))
    np.add.at(sums, labels, vectors * w[:, None])
    return unit_rows(sums)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1 in order of first appearance."""
    order = {int(old): new for new, old in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[int(v)] for v in labels], dtype=int)


def cluster(
    vectors: np.ndarray,
    *,
    stop_distance: float,
    count: int | None = None,
    max_count: int = 10,
    min_weight: float = 0.0,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Voice labels ``(n,)`` (0..k-1, by first appearance) for window vectors ``(n, dim)``.

    `count` given: exactly that many voices (fewer only if there are fewer vectors: the caller's
    units, such as a clip's stretches of speech, bound what a given count can mean). Otherwise the
    tree is cut at `stop_distance` (cosine distance, average linkage), with at most `max_count`
    voices, and groups whose `weights` (seconds of speech of each window; 1 each by default) sum to
    less than `min_weight` are folded into the nearest remaining voice.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1:
        return np.zeros(1, dtype=int)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    unit = unit_rows(np.asarray(vectors)).astype(np.float64)
    tree = linkage(unit, method="average", metric="cosine")
    if count is not None:
        labels = fcluster(tree, min(count, n), criterion="maxclust") - 1
    else:
        labels = fcluster(tree, stop_distance, criterion="distance") - 1
        if labels.max() + 1 > max_count:
            labels = fcluster(tree, max_count, criterion="maxclust") - 1
    labels = _relabel(labels)
    keep = count if count is not None else None
    for _ in range(REFINE_ROUNDS):
        moved = _refine(unit, labels, w, min_weight if keep is None else 0.0)
        if keep is not None and moved.max() + 1 < min(keep, n):
            break  # a given count is obeyed: never let refinement empty a voice
        if np.array_equal(moved, labels):
            break
        labels = moved
    return labels


def _refine(unit: np.ndarray, labels: np.ndarray, weights: np.ndarray, min_weight: float) -> np.ndarray:
    """One round: drop voices lighter than `min_weight` (unless that leaves none), then move each
    window to the nearest centroid."""
    mass = np.bincount(labels, weights=weights)
    real = np.flatnonzero(mass >= min_weight)
    if len(real) == 0:
        real = np.array([int(mass.argmax())])
    means = centroids(unit, labels, weights)[real]
    return _relabel(real[(unit @ means.T).argmax(axis=1)])
