"""Detection metrics on plain score arrays (numpy only): EER, FA at a fixed FR, Wilson intervals.

Convention everywhere: a trial is *accepted* when its score is >= the threshold; higher scores mean
"more likely the same speaker". Rates are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Eer:
    """Equal error rate and the threshold where false accepts and false rejects meet."""

    eer: float
    threshold: float


def _scores(values: ArrayLike, what: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"no {what} scores")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} scores must be finite")
    return array


def eer(target: ArrayLike, nontarget: ArrayLike) -> Eer:
    """The EER of two score sets: where the false-reject rate (targets below the threshold) equals
    the false-accept rate (non-targets at or above it).

    Both rates are evaluated at every distinct score (plus -inf and +inf, where they are 0/1 and
    1/0); the EER is where the straight lines between the two operating points on either side of
    the crossing meet, so perfectly separated scores give 0, fully reversed ones 1, and identical
    distributions about 0.5. `threshold` is the lowest score at which FR >= FA.
    """
    tgt = np.sort(_scores(target, "target"))
    non = np.sort(_scores(nontarget, "non-target"))
    thresholds = np.concatenate(([-np.inf], np.unique(np.concatenate((tgt, non))), [np.inf]))
    frr = np.searchsorted(tgt, thresholds, side="left") / tgt.size
    far = 1.0 - np.searchsorted(non, thresholds, side="left") / non.size
    gap = frr - far  # -1 at -inf, +1 at +inf, non-decreasing in between
    i = int(np.argmax(gap >= 0.0))
    step = gap[i] - gap[i - 1]
    frac = float(-gap[i - 1] / step) if step > 0 else 0.0
    rate = float(frr[i - 1] + frac * (frr[i] - frr[i - 1]))
    threshold = thresholds[i] if np.isfinite(thresholds[i]) else thresholds[i - 1]
    return Eer(eer=rate, threshold=float(threshold))


@dataclass(frozen=True)
class FaAtFr:
    """False-accept rate at the threshold that rejects at most `target_fr` of the targets."""

    target_fr: float
    threshold: float
    false_accepts: int
    nontargets: int
    false_rejects: int
    targets: int

    @property
    def fa_rate(self) -> float:
        return self.false_accepts / self.nontargets

    @property
    def fr_rate(self) -> float:
        return self.false_rejects / self.targets


def fa_at_fr(target: ArrayLike, nontarget: ArrayLike, fr: float = 0.05) -> FaAtFr:
    """Threshold at the `fr` quantile of the target scores (the highest target score with at most
    `fr` of the targets strictly below it), and the non-targets accepted there (score >= it)."""
    if not 0.0 <= fr < 1.0:
        raise ValueError("fr must be in [0, 1)")
    tgt = np.sort(_scores(target, "target"))
    non = _scores(nontarget, "non-target")
    threshold = float(tgt[math.floor(fr * tgt.size + 1e-9)])
    return FaAtFr(
        target_fr=fr,
        threshold=threshold,
        false_accepts=int(np.count_nonzero(non >= threshold)),
        nontargets=int(non.size),
        false_rejects=int(np.count_nonzero(tgt < threshold)),
        targets=int(tgt.size),
    )


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) for no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError("successes must be in [0, trials]")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_eer(
    target: ArrayLike,
    target_groups: Sequence[str],
    nontarget: ArrayLike,
    nontarget_groups: Sequence[str],
    *,
    iterations: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of the EER, resampling *groups* (speakers) with replacement: trials of one
    speaker are correlated, so resampling trials alone would give too narrow an interval.

    `*_groups[i]` names the speaker whose clip produced score i. Returns None with fewer than two
    groups, or when too few resamples hold both kinds of trial.
    """
    tgt = _scores(target, "target")
    non = _scores(nontarget, "non-target")
    if len(target_groups) != tgt.size or len(nontarget_groups) != non.size:
        raise ValueError("one group label per score")
    names = sorted(set(target_groups) | set(nontarget_groups))
    if len(names) < 2:
        return None
    index = {name: i for i, name in enumerate(names)}
    tgt_by = _split(tgt, [index[g] for g in target_groups], len(names))
    non_by = _split(non, [index[g] for g in nontarget_groups], len(names))
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(iterations):
        picks = rng.integers(0, len(names), size=len(names))
        t = np.concatenate([tgt_by[p] for p in picks])
        n = np.concatenate([non_by[p] for p in picks])
        if t.size and n.size:
            values.append(eer(t, n).eer)
    if len(values) < iterations // 2:
        return None
    alpha = (1.0 - level) / 2
    low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return (float(low), float(high))


def _split(scores: NDArray[np.float64], groups: list[int], count: int) -> list[NDArray[np.float64]]:
    labels = np.asarray(groups, dtype=np.int64)
    return [scores[labels == g] for g in range(count)]
