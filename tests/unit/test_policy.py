"""Enrollment rules: spread, completeness, duplicate and mismatch refusals."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from service.enrollment import policy as rules
from service.enrollment.ports import SampleRecord, SpeakerStatus
from service.enrollment.scoring import unit_rows
from service.errors import DuplicateSample, SpeakerMismatch

POLICY = rules.EnrollmentPolicy(
    min_samples=3, min_total_speech_seconds=20.0, min_spread=0.05, duplicate_cosine=0.95, voice_check=0.3
)


def cosine(vector: np.ndarray, voiceprint: np.ndarray) -> float:
    return float(vector @ voiceprint)


SHA = "a" * 64


def sample(vector: np.ndarray, speech: float = 10.0, sha: str = SHA) -> SampleRecord:
    return SampleRecord("s", unit_rows(vector), sha, speech, speech, 30.0, datetime.now(UTC))


def around(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine `cos` from unit vector `base`."""
    noise = rng.standard_normal(base.shape)
    noise -= (noise @ base) * base
    noise = unit_rows(noise)
    return unit_rows(cos * base + np.sqrt(1 - cos**2) * noise)


def test_spread_is_zero_for_copies_and_grows_with_diversity() -> None:
    rng = np.random.default_rng(0)
    base = unit_rows(rng.standard_normal(192))
    _, none = rules.centroid_and_spread([base, base, base])
    _, some = rules.centroid_and_spread([around(base, 0.8, rng) for _ in range(3)])
    assert none == pytest.approx(0.0, abs=1e-6)
    assert 0.05 < some < 0.3


def test_complete_needs_count_speech_and_spread() -> None:
    rng = np.random.default_rng(1)
    base = unit_rows(rng.standard_normal(192))
    diverse = [sample(around(base, 0.8, rng)) for _ in range(3)]
    assert rules.aggregate(diverse[:2], SHA, POLICY).status == SpeakerStatus.ENROLLING
    done = rules.aggregate(diverse, SHA, POLICY)
    assert done.status == SpeakerStatus.COMPLETE and done.sample_count == 3 and done.speech_seconds == 30.0
    short = [sample(around(base, 0.8, rng), speech=5.0) for _ in range(3)]
    assert rules.aggregate(short, SHA, POLICY).status == SpeakerStatus.ENROLLING
    assert rules.missing(3, 15.0, 0.1, POLICY) == ["more speech"]
    copies = [sample(around(base, 0.999, rng)) for _ in range(3)]
    assert rules.missing(3, 30.0, rules.aggregate(copies, SHA, POLICY).spread, POLICY) == [
        "more diverse samples"
    ]


def test_other_models_vectors_are_not_mixed_in() -> None:
    rng = np.random.default_rng(2)
    base = unit_rows(rng.standard_normal(192))
    mixed = [sample(around(base, 0.8, rng)) for _ in range(2)] + [sample(base, sha="b" * 64)]
    result = rules.aggregate(mixed, SHA, POLICY)
    assert result.sample_count == 2
    assert rules.aggregate([sample(base, sha="b" * 64)], SHA, POLICY).centroid is None


def test_progress_runs_from_zero_to_one() -> None:
    assert rules.progress(0, 0.0, 0.0, POLICY) == 0.0
    partial = rules.progress(2, 15.0, 0.03, POLICY)
    assert 0.0 < partial < 1.0
    assert rules.progress(3, 30.0, 0.1, POLICY) == 1.0


def test_near_copy_and_other_voice_are_refused() -> None:
    rng = np.random.default_rng(3)
    base = unit_rows(rng.standard_normal(192))
    earlier = [sample(base), sample(around(base, 0.8, rng))]
    with pytest.raises(DuplicateSample):
        rules.check_new_sample(around(base, 0.99, rng), earlier, POLICY)
    voice = (cosine, POLICY.voice_check)
    with pytest.raises(SpeakerMismatch):
        rules.check_new_sample(unit_rows(rng.standard_normal(192)), earlier, POLICY, voice=voice)
    rules.check_new_sample(around(base, 0.75, rng), earlier, POLICY, voice=voice)
    rules.check_new_sample(unit_rows(rng.standard_normal(192)), [], POLICY, voice=voice)
    # The bar a complete speaker's samples must clear is the caller's: the same voice fails a higher one.
    with pytest.raises(SpeakerMismatch):
        rules.check_new_sample(around(base, 0.75, rng), earlier, POLICY, voice=(cosine, 0.9))
