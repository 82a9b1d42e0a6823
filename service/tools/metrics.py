"""Detection metrics on plain score arrays: the one place that computes EER, DET curves, FA/FR at a
threshold, FA at a fixed FR, Wilson intervals, the bootstrap over speakers, and their plots.

Convention everywhere: a trial is *accepted* when its score is >= the threshold; higher scores mean
"more likely the same speaker". Targets are same-speaker (genuine) trials, non-targets are
different-speaker (impostor) trials. Rates are fractions in [0, 1].

Only numpy is imported here; matplotlib is imported inside the plotting functions, so the service and
the commands that never plot do not pay for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Z95 = 1.959963984540054

Statistic = Callable[[NDArray[np.float64], NDArray[np.float64]], float]


def _scores(values: ArrayLike, what: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"no {what} scores")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} scores must be finite")
    return array


# --- rates and their intervals -------------------------------------------------------------------


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


@dataclass(frozen=True)
class Rate:
    """`count` events out of `of` trials, with its 95 % Wilson interval."""

    count: int
    of: int

    @property
    def value(self) -> float | None:
        return self.count / self.of if self.of else None

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson(self.count, self.of)

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.value, "count": self.count, "of": self.of, "ci95": list(self.ci95)}


@dataclass(frozen=True)
class OperatingPoint:
    """False accepts and false rejects at one threshold."""

    threshold: float
    false_accepts: int
    nontargets: int
    false_rejects: int
    targets: int

    @property
    def fa(self) -> Rate:
        return Rate(self.false_accepts, self.nontargets)

    @property
    def fr(self) -> Rate:
        return Rate(self.false_rejects, self.targets)

    @property
    def fa_rate(self) -> float:
        return self.false_accepts / self.nontargets if self.nontargets else 0.0

    @property
    def fr_rate(self) -> float:
        return self.false_rejects / self.targets if self.targets else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "falseAccepts": self.fa.as_dict(),
            "falseRejects": self.fr.as_dict(),
        }


def rates_at(target: ArrayLike, nontarget: ArrayLike, threshold: float) -> OperatingPoint:
    """FA and FR at `threshold`: non-targets scoring >= it, targets scoring below it. Either set may
    be empty (its rate is then 0 of 0)."""
    tgt = np.asarray(target, dtype=np.float64).reshape(-1)
    non = np.asarray(nontarget, dtype=np.float64).reshape(-1)
    return OperatingPoint(
        threshold=float(threshold),
        false_accepts=int(np.count_nonzero(non >= threshold)),
        nontargets=int(non.size),
        false_rejects=int(np.count_nonzero(tgt < threshold)),
        targets=int(tgt.size),
    )


def fa_at_fr(target: ArrayLike, nontarget: ArrayLike, fr: float = 0.05) -> OperatingPoint:
    """The operating point at the `fr` quantile of the target scores (the highest target score with at
    most `fr` of the targets strictly below it): the non-targets accepted there, with at most `fr`
    of the targets rejected."""
    if not 0.0 <= fr < 1.0:
        raise ValueError("fr must be in [0, 1)")
    tgt = np.sort(_scores(target, "target"))
    non = _scores(nontarget, "non-target")
    return rates_at(tgt, non, float(tgt[math.floor(fr * tgt.size + 1e-9)]))


# --- DET curve and EER ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Det:
    """A detection error trade-off curve: at `thresholds[i]`, a share `fa[i]` of non-targets is
    accepted and a share `fr[i]` of targets rejected. Thresholds ascend from -inf (FA 1, FR 0)
    through every distinct score to +inf (FA 0, FR 1); FA never rises, FR never falls."""

    thresholds: NDArray[np.float64]
    fa: NDArray[np.float64]
    fr: NDArray[np.float64]
    targets: int
    nontargets: int


def det_curve(target: ArrayLike, nontarget: ArrayLike) -> Det:
    tgt = np.sort(_scores(target, "target"))
    non = np.sort(_scores(nontarget, "non-target"))
    thresholds = np.concatenate(([-np.inf], np.unique(np.concatenate((tgt, non))), [np.inf]))
    fr = np.searchsorted(tgt, thresholds, side="left") / tgt.size
    fa = (non.size - np.searchsorted(non, thresholds, side="left")) / non.size
    return Det(thresholds=thresholds, fa=fa, fr=fr, targets=int(tgt.size), nontargets=int(non.size))


@dataclass(frozen=True)
class Eer:
    """Equal error rate and the threshold where false accepts and false rejects meet."""

    eer: float
    threshold: float


def eer(target: ArrayLike, nontarget: ArrayLike) -> Eer:
    """Where the DET curve crosses FR = FA. The EER is where the straight line between the two
    operating points on either side of the crossing meets it, so perfectly separated scores give 0,
    fully reversed ones 1, and identical distributions about 0.5. `threshold` is the lowest score at
    which FR >= FA."""
    return eer_of(det_curve(target, nontarget))


def eer_of(det: Det) -> Eer:
    gap = det.fr - det.fa  # -1 at -inf, +1 at +inf, non-decreasing in between
    i = int(np.argmax(gap >= 0.0))
    step = gap[i] - gap[i - 1]
    frac = float(-gap[i - 1] / step) if step > 0 else 0.0
    rate = float(det.fr[i - 1] + frac * (det.fr[i] - det.fr[i - 1]))
    threshold = det.thresholds[i] if np.isfinite(det.thresholds[i]) else det.thresholds[i - 1]
    return Eer(eer=rate, threshold=float(threshold))


def eer_value(target: NDArray[np.float64], nontarget: NDArray[np.float64]) -> float:
    return eer(target, nontarget).eer


# --- the bootstrap over speakers -----------------------------------------------------------------


def bootstrap(
    target: ArrayLike,
    target_groups: Sequence[str],
    nontarget: ArrayLike,
    nontarget_groups: Sequence[str],
    statistic: Statistic = eer_value,
    *,
    iterations: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of `statistic(targets, non-targets)` (the EER by default), resampling
    *speakers* with replacement and taking every trial of each drawn speaker: trials of one speaker
    are correlated, so resampling trials alone would give too narrow an interval.

    `*_groups[i]` names the speaker whose clip produced score i. The same inputs and `seed` give the
    same interval. Returns None with fewer than two speakers, or when fewer than half the resamples
    hold both kinds of trial.
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
            values.append(statistic(t, n))
    if len(values) < max(1, iterations // 2):
        return None
    alpha = (1.0 - level) / 2
    low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return (float(low), float(high))


def _split(scores: NDArray[np.float64], groups: list[int], count: int) -> list[NDArray[np.float64]]:
    labels = np.asarray(groups, dtype=np.int64)
    return [scores[labels == g] for g in range(count)]


# --- plots ---------------------------------------------------------------------------------------

DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99)


def _probit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    inv = NormalDist().inv_cdf
    return np.asarray([inv(float(x)) for x in p], dtype=np.float64)


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn by the Agg canvas: no GUI, no global pyplot state, thread-safe."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_det(
    curves: Mapping[str, Det],
    path: Path,
    *,
    points: Mapping[str, OperatingPoint] | None = None,
    title: str = "DET curve",
) -> Path:
    """Write the standard DET plot (FR against FA, both on normal-deviate axes) of one or more curves
    as a PNG, each curve's EER marked, and named operating points (e.g. a service's threshold)
    as crosses. Rates of 0 and 1 are drawn at the axis edges, which follow the data's resolution
    (down to 0.1 %); the legend sits below the plot, where it hides no curve."""
    if not curves:
        raise ValueError("no curve to plot")
    trials = max(max(c.targets, c.nontargets) for c in curves.values())
    low = min(0.01, max(DET_TICKS[0], 0.5 / trials))
    high = 0.6 if all(eer_of(c).eer < 0.1 for c in curves.values()) else 0.95  # weak systems: wider
    ticks = [t for t in DET_TICKS if low <= t <= high]

    def axis(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return _probit(np.clip(p, low, high))

    figure = _figure(6.0, 7.0)
    ax = figure.add_subplot()
    for name, curve in curves.items():
        e = eer_of(curve).eer
        (line,) = ax.plot(axis(curve.fa), axis(curve.fr), label=f"{name} (EER {100 * e:.1f} %)")
        ax.plot(*axis(np.array([e, e])), "o", color=line.get_color(), markersize=5)
    for name, point in (points or {}).items():
        x, y = axis(np.array([point.fa_rate, point.fr_rate]))
        ax.plot([x], [y], "kx", markersize=8)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    edges = _probit(np.array([low, high]))
    ax.plot(edges, edges, ":", color="grey", linewidth=0.8)  # FA = FR
    ax.set_xlim(*edges)
    ax.set_ylim(*edges)
    labels = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(_probit(np.array(ticks)), labels)
    ax.set_yticks(_probit(np.array(ticks)), labels)
    ax.set_xlabel("false accept rate (%)")
    ax.set_ylabel("false reject rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.set_aspect("equal")
    figure.legend(loc="outside lower center", ncols=2, fontsize=8)  # the plot's corners hold curves
    figure.savefig(path, format="png")
    return path


def plot_score_histograms(
    scores: Mapping[str, ArrayLike],
    path: Path,
    *,
    thresholds: Sequence[float] = (),
    title: str = "scores",
    xlabel: str = "score",
    bins: int = 40,
) -> Path:
    """Write overlaid histograms (densities, shared bins) of named score sets as a PNG, with each
    threshold drawn as a vertical line. Empty sets are listed in the legend with n = 0."""
    figure = _figure(7.0, 4.5)
    ax = figure.add_subplot()
    arrays = {name: np.asarray(v, dtype=np.float64).reshape(-1) for name, v in scores.items()}
    arrays = {name: a[np.isfinite(a)] for name, a in arrays.items()}
    filled = [a for a in arrays.values() if a.size]
    lo = min([float(a.min()) for a in filled] + list(thresholds), default=0.0)
    hi = max([float(a.max()) for a in filled] + list(thresholds), default=1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for name, values in arrays.items():
        if values.size:
            ax.hist(values, bins=edges, density=True, alpha=0.45, label=f"{name} (n={values.size})")
        else:
            ax.plot([], [], label=f"{name} (n=0)")
    for t in thresholds:
        ax.axvline(t, color="black", linestyle="--", linewidth=1.2, label=f"threshold {t:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    figure.savefig(path, format="png")
    return path


# --- diarization ---------------------------------------------------------------------------------

Turn = tuple[str, float, float]  # (speaker label, start s, end s)
DER_STEP_S = 0.001


@dataclass(frozen=True)
class DiarizationError:
    """Diarization error rate and its parts, in seconds of reference speech (overlap counted once
    per speaker: two voices at once are two seconds a second)."""

    total: float
    missed: float
    false_alarm: float
    confusion: float

    @property
    def der(self) -> float:
        return (self.missed + self.false_alarm + self.confusion) / self.total if self.total else 0.0


def _grid(turns: Sequence[Turn], labels: list[str], frames: int, step: float) -> NDArray[np.bool_]:
    """``(len(labels), frames)``: whether each label speaks in each frame."""
    out = np.zeros((len(labels), frames), dtype=bool)
    for label, start, end in turns:
        out[labels.index(label), max(0, round(start / step)) : max(0, round(end / step))] = True
    return out


def diarization_error(
    reference: Sequence[Turn], hypothesis: Sequence[Turn], collar: float = 0.25, step: float = DER_STEP_S
) -> DiarizationError:
    """DER as NIST md-eval and pyannote.metrics compute it: the hypothesis labels mapped one-to-one
    onto the reference labels for the most time together (Hungarian), a `collar` of that many seconds
    around every reference turn's edges left out (half before, half after: pyannote's convention;
    md-eval's 0.25 s is 0.5 here), the rest of the time scored frame by frame (`step` s):
    per frame, missed = max(0, ref - hyp speakers), false alarm = max(0, hyp - ref), confusion =
    min(ref, hyp) - correctly mapped."""
    from scipy.optimize import linear_sum_assignment

    end = max([e for _, _, e in [*reference, *hypothesis]], default=0.0)
    frames = round(end / step) + 1
    ref_labels = list(dict.fromkeys(t[0] for t in reference))
    hyp_labels = list(dict.fromkeys(t[0] for t in hypothesis))
    ref = _grid(reference, ref_labels, frames, step)
    hyp = _grid(hypothesis, hyp_labels, frames, step)
    scored = np.ones(frames, dtype=bool)
    for _, start, stop in reference:
        for edge in (start, stop):
            half = collar / 2
            scored[max(0, round((edge - half) / step)) : max(0, round((edge + half) / step))] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    together = ref.astype(np.float64) @ hyp.T.astype(np.float64)  # (ref labels, hyp labels) frames
    rows, cols = linear_sum_assignment(-together) if together.size else ([], [])
    correct = np.zeros(ref.shape[1])
    for r, c in zip(rows, cols, strict=True):
        correct += ref[r] & hyp[c]
    n_ref, n_hyp = ref.sum(axis=0), hyp.sum(axis=0)
    return DiarizationError(
        total=float(n_ref.sum() * step),
        missed=float(np.maximum(0, n_ref - n_hyp).sum() * step),
        false_alarm=float(np.maximum(0, n_hyp - n_ref).sum() * step),
        confusion=float((np.minimum(n_ref, n_hyp) - correct).sum() * step),
    )
