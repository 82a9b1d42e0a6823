"""The studies' arithmetic: nuisance directions found from deviations and projected out, the
decision study's trials scored with their speech seconds, and false rejects at a false-accept rate."""

from __future__ import annotations

import numpy as np
import pytest

from devtools import decisions as D
from devtools.nuisance import directions, project, scatter
from service.enrollment.scoring import DecisionRule, Scorer, unit_rows

DIM = 192


def test_the_dominant_nuisance_direction_is_found_and_projected_out() -> None:
    rng = np.random.default_rng(0)
    channel = unit_rows(rng.standard_normal((1, DIM)))[0]
    # Deviations: a strong spread along the channel direction plus weak isotropic noise.
    deviations = rng.standard_normal((500, 1)) * channel + 0.05 * rng.standard_normal((500, DIM))
    basis = directions(scatter(deviations), 1)
    assert basis.shape == (1, DIM)
    assert abs(float(basis[0] @ channel)) > 0.99

    voices = unit_rows(rng.standard_normal((20, DIM)))
    heard = unit_rows(voices + 0.8 * rng.standard_normal((20, 1)) * channel)  # each through its own line
    cleaned = project(heard, basis)
    assert np.allclose(np.linalg.norm(cleaned, axis=1), 1.0, atol=1e-5)
    assert np.abs(cleaned @ basis.T).max() < 1e-4
    # The same voice through two lines agrees better once the line's direction is gone.
    again = unit_rows(voices - 0.8 * rng.standard_normal((20, 1)) * channel)
    before = np.sum(heard * again, axis=1)
    after = np.sum(cleaned * project(again, basis), axis=1)
    assert after.mean() > before.mean() + 0.1


def test_no_directions_leave_vectors_as_they_are() -> None:
    x = unit_rows(np.random.default_rng(1).standard_normal((3, DIM)))
    assert np.array_equal(project(x, np.zeros((0, DIM), np.float32)), x)


def test_false_rejects_at_a_false_accept_rate_count_misidentified_clips_as_rejected() -> None:
    unknown = np.arange(100, dtype=float)  # 100 unknown voices scoring 0..99
    genuine = np.array([98.5, 99.5, 120.0, 130.0])
    right = np.array([True, True, True, False])  # the last is named as someone else
    scored = D.Scored(
        best=np.concatenate([unknown, genuine]),
        right=np.concatenate([np.zeros(100, bool), right]),
        genuine=np.concatenate([np.zeros(100, bool), np.ones(4, bool)]),
    )
    threshold, fr = D.fr_at_fa([scored], 0.01)  # one unknown voice (99) may pass
    assert threshold == pytest.approx(98.0, abs=1e-3)
    assert D.pooled([scored], threshold).false_accepts == 1
    assert fr == pytest.approx(1 / 4)  # 98.5, 99.5 and 120 pass; the misidentified one does not


def test_the_decision_study_scores_each_clip_with_its_speech_seconds_as_the_service_does() -> None:
    """A short clip gains the duration term in the study exactly as `Scorer.scores` gives it, and the
    seconds follow the trials through `Trials.subset` (the leave-one-out cases)."""
    rng = np.random.default_rng(2)
    samples = [unit_rows(rng.standard_normal((3, DIM))) for _ in range(4)]
    tenant = D.Tenant(["a", "b", "c", "d"], samples)
    queries = unit_rows(rng.standard_normal((3, DIM)))
    seconds = np.array([1.0, 3.0, 8.0])
    trials = D.Trials(queries, ["a", None, "c"], ["a", "x", "c"], [0, 1, 2], seconds)
    rule = DecisionRule(
        prior_mean=np.zeros(DIM, np.float32),
        prior_weight=5.0,
        pair_mean=0.0,
        pair_sd=0.1,
        strength=3.0,
        unit=0.1,
        short_s=3.0,
        short_slope=0.675,
    )
    scorer = Scorer(rule)
    service = D.Service(scorer)
    with_seconds = service.scores(tenant, queries, seconds)
    scale = scorer.build_scale(tenant.centroids)
    assert np.allclose(with_seconds, scorer.scores(queries, tenant.centroids, scale, 4, seconds))
    gained = with_seconds - service.scores(tenant, queries)
    assert np.allclose(gained[0], 0.675 * np.log(3.0)) and np.allclose(gained[1:], 0.0)
    kept = trials.subset([2, 0], unknown=True)
    assert kept.seconds is not None and list(kept.seconds) == [8.0, 1.0] and kept.truth == [None, None]
    best = D.score_case(service, D.Case("c", tenant, trials)).best
    assert np.allclose(best, with_seconds.max(axis=1))
