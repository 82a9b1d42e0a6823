"""What keeps a voiceprint one voice, and a tenant's scale its own: the enrollment rules and the
score cohort, without the model (vectors are made to measure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest

from service import calibration as cal
from service.enrollment import policy as rules
from service.enrollment.ports import IndexEntry, SampleRecord, SpeakerStatus
from service.enrollment.scoring import DecisionRule, Scorer, unit_rows
from service.errors import SpeakerMismatch
from service.storage.index import FaissSpeakerIndex

DIM = 192
SHA = "a" * 64
POLICY = rules.EnrollmentPolicy(
    min_samples=3,
    min_total_speech_seconds=20.0,
    min_spread=cal.MIN_SPREAD,
    duplicate_cosine=cal.DUPLICATE_COSINE,
    voice_check=cal.VOICE_CHECK,
    max_spread=cal.MAX_SPREAD,
)
COMPLETE_LEAST = 0.6


def around(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine `cos` from unit vector `base`."""
    noise = rng.standard_normal(base.shape)
    noise = unit_rows(noise - (noise @ base) * base)
    return unit_rows(cos * base + np.sqrt(1 - cos**2) * noise)


def samples(vectors: Sequence[np.ndarray]) -> list[SampleRecord]:
    now = datetime.now(UTC)
    return [SampleRecord(f"s{i}", unit_rows(v), SHA, 10.0, 10.0, 30.0, now) for i, v in enumerate(vectors)]


def by_cosine(vector: np.ndarray, voiceprint: np.ndarray) -> float:
    return float(vector @ voiceprint)


def test_a_complete_voiceprint_is_held_to_the_samples_that_completed_it() -> None:
    """Each step of a walk passes against the voiceprint of everything before it; the walk's end does
    not pass against the voiceprint that made the speaker complete, so it is refused."""
    rng = np.random.default_rng(0)
    base = unit_rows(rng.standard_normal(DIM))
    away = rng.standard_normal(DIM)
    away = unit_rows(away - (away @ base) * base)
    completed = [around(base, 0.92, rng) for _ in range(3)]

    def towards(degrees: float) -> np.ndarray:
        angle = np.radians(degrees)
        return unit_rows(np.cos(angle) * base + np.sin(angle) * away)

    earlier = samples(completed)
    assert rules.aggregate(earlier, SHA, POLICY).status == SpeakerStatus.COMPLETE
    for degrees in (20, 40):  # each close enough to the speaker's samples so far
        step = towards(degrees)
        centre, _ = rules.centroid_and_spread([s.vector for s in earlier])
        assert by_cosine(step, centre) >= COMPLETE_LEAST
        earlier = [*earlier, *samples([step])]
    last = towards(60)
    anchor, _ = rules.centroid_and_spread([s.vector for s in earlier[:3]])
    assert by_cosine(last, anchor) < COMPLETE_LEAST
    everything, _ = rules.centroid_and_spread([s.vector for s in earlier])
    assert by_cosine(last, everything) >= COMPLETE_LEAST  # would pass against the walked voiceprint
    with pytest.raises(SpeakerMismatch):
        rules.check_new_sample(last, earlier, POLICY, voice=(by_cosine, COMPLETE_LEAST))
    # A sample of the voice that completed it still passes.
    rules.check_new_sample(around(base, 0.9, rng), earlier, POLICY, voice=(by_cosine, COMPLETE_LEAST))


def test_a_sample_that_would_widen_the_voiceprint_past_one_voice_is_refused() -> None:
    """However the voice check scores it, a sample that takes the spread past every genuine speaker's
    (`calibration.MAX_SPREAD`) is refused; one that keeps it inside is not."""
    rng = np.random.default_rng(1)
    base = unit_rows(rng.standard_normal(DIM))
    earlier = samples([around(base, 0.62, rng) for _ in range(3)])
    _, spread = rules.centroid_and_spread([s.vector for s in earlier])
    assert 0.2 < spread < cal.MAX_SPREAD
    passes_anything = (lambda vector, voiceprint: 99.0, 2.9)
    wide = unit_rows(rng.standard_normal(DIM))
    _, widened = rules.centroid_and_spread([*[s.vector for s in earlier], wide])
    assert widened > cal.MAX_SPREAD
    with pytest.raises(SpeakerMismatch, match="spread"):
        rules.check_new_sample(wide, earlier, POLICY, voice=passes_anything)
    rules.check_new_sample(around(base, 0.9, rng), earlier, POLICY, voice=passes_anything)


def test_one_voice_under_many_incomplete_ids_counts_as_one_voice_in_the_tenants_scale() -> None:
    """The tenant's scale (domain mean and impostor level) counts each voice once: twenty one-sample
    ids of one voice weigh as one speaker, exactly as if it had enrolled once."""
    rng = np.random.default_rng(2)
    rule = DecisionRule.calibrated(unit_rows(rng.standard_normal(DIM)))
    scorer = Scorer(rule)
    index = FaissSpeakerIndex(DIM)
    tenant = 1
    complete = [
        IndexEntry(i, tenant, f"s{i}", True, unit_rows(rng.standard_normal(DIM))) for i in range(1, 9)
    ]
    index.replace([*complete, IndexEntry(100, 2, "elsewhere", True, unit_rows(rng.standard_normal(DIM)))])
    before = scorer.build_scale(index.cohort(tenant)[1])
    cached = scorer.scale(tenant, *index.cohort(tenant))

    voice = unit_rows(rng.standard_normal(DIM))
    for i in range(20):
        index.upsert(IndexEntry(200 + i, tenant, f"copy-{i}", False, around(voice, 0.99, rng)))

    assert index.tenant_size(tenant) == 28  # they are candidates for identify ...
    ids, centroids = index.cohort(tenant)
    after = scorer.scale(tenant, ids, centroids)
    assert after is not cached and before.speakers == 8
    once = scorer.build_scale(np.concatenate([index.cohort(tenant)[1][:8], centroids[8:9]]))
    assert after.speakers == once.speakers == 9  # ... and one voice of the cohort, not twenty
    assert np.allclose(after.mean, once.mean)
    assert (after.pair_mean, after.pair_sd) == pytest.approx((once.pair_mean, once.pair_sd))
