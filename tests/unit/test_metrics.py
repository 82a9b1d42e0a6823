"""Detection metrics (service/tools/metrics.py) on synthetic scores with known answers."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.tools import metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


# --- EER -----------------------------------------------------------------------------------------


def test_eer_of_separated_reversed_and_identical_scores() -> None:
    assert metrics.eer([2.0, 3.0], [0.0, 1.0]) == metrics.Eer(eer=0.0, threshold=2.0)
    assert metrics.eer([0.0, 1.0], [2.0, 3.0]).eer == 1.0
    assert metrics.eer([1.0, 1.0], [1.0, 1.0]).eer == 0.5


def test_eer_with_one_error_on_each_side() -> None:
    # One target of five below the threshold 0.6, one non-target of five above it: FR = FA = 20 %.
    result = metrics.eer([0.6, 0.7, 0.8, 0.9, 0.35], [0.1, 0.2, 0.3, 0.4, 0.65])
    assert result.eer == pytest.approx(0.2)
    assert result.threshold == pytest.approx(0.6)


@pytest.mark.parametrize(("distance", "spread"), [(2.0, 1.0), (3.0, 1.0), (1.0, 2.0)])
def test_eer_of_two_gaussians_matches_theory(distance: float, spread: float) -> None:
    # Equal-variance Gaussians d apart cross at d/2, where FR = FA = Phi(-d / (2 sigma)).
    rng = np.random.default_rng(7)
    target = rng.normal(distance, spread, 200_000)
    nontarget = rng.normal(0.0, spread, 200_000)
    result = metrics.eer(target, nontarget)
    assert result.eer == pytest.approx(phi(-distance / (2 * spread)), abs=0.004)
    assert result.threshold == pytest.approx(distance / 2, abs=0.03 * spread)
    swapped = metrics.eer(-nontarget, -target)  # the same problem mirrored
    assert swapped.eer == pytest.approx(result.eer, abs=1e-3)


def test_eer_of_unequal_variances_is_where_the_rates_cross() -> None:
    # Targets N(2, 1), non-targets N(0, 0.5): FR(t) = Phi(t - 2) = FA(t) = Phi(-2t) at t = 2/3.
    rng = np.random.default_rng(11)
    result = metrics.eer(rng.normal(2.0, 1.0, 300_000), rng.normal(0.0, 0.5, 300_000))
    assert result.eer == pytest.approx(phi(-4 / 3), abs=0.003)
    assert result.threshold == pytest.approx(2 / 3, abs=0.02)


def test_eer_refuses_empty_or_non_finite_scores() -> None:
    with pytest.raises(ValueError):
        metrics.eer([], [1.0])
    with pytest.raises(ValueError):
        metrics.eer([1.0, float("nan")], [0.0])


# --- DET curve -----------------------------------------------------------------------------------


def test_det_curve_runs_from_accept_all_to_reject_all_monotonically() -> None:
    rng = np.random.default_rng(5)
    target, nontarget = rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.0, 800)
    det = metrics.det_curve(target, nontarget)
    assert (det.targets, det.nontargets) == (500, 800)
    assert det.thresholds.shape == det.fa.shape == det.fr.shape
    assert np.all(np.diff(det.thresholds) > 0)
    assert np.all(np.diff(det.fa) <= 0) and np.all(np.diff(det.fr) >= 0)
    assert (det.fa[0], det.fr[0], det.fa[-1], det.fr[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert metrics.eer_of(det) == metrics.eer(target, nontarget)


def test_det_curve_rates_match_counting_at_every_threshold() -> None:
    target, nontarget = [0.2, 0.5, 0.5, 0.9], [0.1, 0.5, 0.7]
    det = metrics.det_curve(target, nontarget)
    for t, fa, fr in zip(det.thresholds[1:-1], det.fa[1:-1], det.fr[1:-1], strict=True):
        point = metrics.rates_at(target, nontarget, t)
        assert (fa, fr) == (point.fa_rate, point.fr_rate)


# --- rates at a threshold, FA at a fixed FR ------------------------------------------------------


def test_rates_at_a_threshold_count_ties_as_accepts() -> None:
    point = metrics.rates_at([0.4, 0.5, 0.9], [0.1, 0.5, 0.6, 0.2], 0.5)
    assert (point.false_rejects, point.targets, point.false_accepts, point.nontargets) == (1, 3, 2, 4)
    assert point.fr_rate == pytest.approx(1 / 3) and point.fa_rate == 0.5
    assert point.fa.ci95 == metrics.wilson(2, 4) and point.fr == metrics.Rate(1, 3)
    assert point.as_dict()["falseAccepts"] == {
        "rate": 0.5,
        "count": 2,
        "of": 4,
        "ci95": list(metrics.wilson(2, 4)),
    }
    empty = metrics.rates_at([], [0.3], 0.0)
    assert (empty.fr_rate, empty.fr.value, empty.fr.ci95) == (0.0, None, (0.0, 1.0))


def test_fa_at_5_percent_fr() -> None:
    target = np.arange(100, dtype=float)  # 0..99: the threshold that rejects 5 of them is 5
    nontarget = np.array([-1.0, 4.9, 5.0, 50.0])
    result = metrics.fa_at_fr(target, nontarget, 0.05)
    assert result.threshold == 5.0
    assert (result.false_rejects, result.targets) == (5, 100)
    assert (result.false_accepts, result.nontargets) == (2, 4)
    assert result.fa_rate == 0.5
    # With fewer targets than 1/fr, no target may be rejected: the threshold is the lowest target.
    assert metrics.fa_at_fr([3.0, 1.0, 2.0], [0.5, 1.5], 0.05).threshold == 1.0
    with pytest.raises(ValueError):
        metrics.fa_at_fr([1.0], [0.0], 1.0)


# --- Wilson intervals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Statistics in Medicine 17:857, table I
        (15, 148, 0.0624, 0.1605),  # ibid.
        (1, 29, 0.0061, 0.1718),  # ibid.
    ],
)
def test_wilson_interval_matches_published_values(
    successes: int, trials: int, low: float, high: float
) -> None:
    assert metrics.wilson(successes, trials) == pytest.approx((low, high), abs=1e-4)


def test_wilson_edge_cases() -> None:
    assert metrics.wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        metrics.wilson(3, 2)
    assert metrics.Rate(0, 0).as_dict() == {"rate": None, "count": 0, "of": 0, "ci95": [0.0, 1.0]}


# --- the bootstrap over speakers -----------------------------------------------------------------


def test_bootstrap_over_speakers_brackets_the_eer_and_repeats_with_its_seed() -> None:
    rng = np.random.default_rng(3)
    groups = [f"s{i % 10}" for i in range(200)]
    target, nontarget = rng.normal(1.5, 1.0, 200), rng.normal(0.0, 1.0, 200)
    point = metrics.eer(target, nontarget).eer
    ci = metrics.bootstrap(target, groups, nontarget, groups, iterations=300, seed=1)
    assert ci is not None
    assert ci[0] <= point <= ci[1] and ci[1] - ci[0] < 0.3
    assert ci == metrics.bootstrap(target, groups, nontarget, groups, iterations=300, seed=1)
    assert ci != metrics.bootstrap(target, groups, nontarget, groups, iterations=300, seed=2)
    assert metrics.bootstrap([1.0], ["a"], [0.0], ["a"]) is None  # one speaker: nothing to resample
    with pytest.raises(ValueError):
        metrics.bootstrap([1.0, 2.0], ["a"], [0.0], ["b"])


def test_bootstrap_resamples_speakers_not_trials() -> None:
    # Each speaker's trials all share one score: resampling whole speakers can only ever give means
    # of speaker values, so a statistic of the targets' mean shows which unit was drawn.
    target = np.repeat([0.0, 1.0], 50)
    groups = ["a"] * 50 + ["b"] * 50

    def target_mean(t: np.ndarray, _n: np.ndarray) -> float:
        return float(t.mean())

    ci = metrics.bootstrap(target, groups, [0.5, 0.5], ["a", "b"], target_mean, iterations=200, seed=0)
    assert ci == (0.0, 1.0)  # draws of {a, a} or {b, b} happen; resampled trials would stay near 0.5


def test_distribution_summary() -> None:
    from devtools.gates import distribution

    summary = distribution([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert summary["n"] == 4 and summary["min"] == 1.0 and summary["max"] == 4.0
    assert summary["p50"] == 2.5 and summary["mean"] == 2.5 and "p5" in summary
    assert distribution([]) == {"n": 0}


# --- plots ---------------------------------------------------------------------------------------


def test_metrics_imports_no_matplotlib() -> None:
    code = "import sys, service.tools.metrics; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    target, nontarget = rng.normal(2.0, 1.0, 300), rng.normal(0.0, 1.0, 3000)
    det = metrics.plot_det(
        {"a": metrics.det_curve(target, nontarget), "b": metrics.det_curve([1.0], [0.0])},
        tmp_path / "det.png",
        points={"threshold": metrics.rates_at(target, nontarget, 1.5)},
    )
    scores = metrics.plot_score_histograms(
        {"genuine": target, "impostor": nontarget, "none": []}, tmp_path / "scores.png", thresholds=[1.5]
    )
    for path in (det, scores):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    with pytest.raises(ValueError):
        metrics.plot_det({}, tmp_path / "none.png")
