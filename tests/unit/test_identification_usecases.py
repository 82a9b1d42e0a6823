"""IdentificationService and the Scorer wired as the service wires them, on the fakes of
devtools.fakes and the real faiss index: no HTTP, no model, no database, no speech sets. The same
decisions on real speech with the real model are tested in tests/api and tests/model."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.fakes import FakeServices, MemoryStore, SyntheticVoice, as_linear16, fake_services
from service.enrollment.scoring import DecisionRule, Scorer
from service.errors import InsufficientSpeech, ServiceError, SpeakerNotFound

ALICE, BOB, CAROL, DAVE = (SyntheticVoice(seed) for seed in (1, 2, 3, 4))
STRANGER = SyntheticVoice(99)  # never enrolled
ACME, GLOBEX = 1, 2  # tenant row ids


@pytest.fixture(scope="module")
def enrolled() -> MemoryStore:
    """Tenant ACME: alice, bob and carol complete, dave with one sample."""
    svc = fake_services()
    for name, voice in (("alice", ALICE), ("bob", BOB), ("carol", CAROL)):
        svc.enroll_takes(ACME, name, voice)
    svc.enrollment.enroll(ACME, "dave", DAVE.clip(0))
    return svc.store


@pytest.fixture
def svc(enrolled: MemoryStore) -> FakeServices:
    """The use cases started afresh on a copy of `enrolled`."""
    return fake_services(store=enrolled.copy())


def test_a_known_voice_is_named_with_its_score_and_cosine(svc: FakeServices) -> None:
    found = svc.identification.identify(ACME, ALICE.clip(10), top_k=3)
    threshold = svc.identification.thresholds.identify
    assert found.speaker_id == "alice" and found.score is not None and found.score >= threshold
    assert found.candidates[0].speaker_id == "alice" and len(found.candidates) == 3
    assert [c.score for c in found.candidates] == sorted((c.score for c in found.candidates), reverse=True)
    assert all(c.score < threshold for c in found.candidates[1:])
    best = found.candidates[0]
    assert best.score == found.score and best.complete and 0.7 < best.cosine <= 1.0
    assert found.speech_seconds == pytest.approx(7.0, abs=0.05)


def test_a_speaker_with_one_sample_is_a_candidate_that_says_so(svc: FakeServices) -> None:
    found = svc.identification.identify(ACME, DAVE.clip(10))
    assert found.speaker_id == "dave"
    assert not found.candidates[0].complete


def test_an_unknown_voice_is_no_one(svc: FakeServices) -> None:
    found = svc.identification.identify(ACME, STRANGER.clip(0))
    assert found.speaker_id is None
    assert found.score is not None and found.score < svc.identification.thresholds.identify
    assert len(found.candidates) == 4  # still ranked, for the app to see


def test_verify_accepts_the_speaker_and_rejects_another_voice(svc: FakeServices) -> None:
    genuine = svc.identification.verify(ACME, BOB.clip(10), "bob")
    impostor = svc.identification.verify(ACME, ALICE.clip(10), "bob")
    assert genuine.match and genuine.complete and genuine.score >= genuine.threshold
    assert not impostor.match and impostor.score < impostor.threshold
    assert genuine.cosine > impostor.cosine
    with pytest.raises(SpeakerNotFound):
        svc.identification.verify(ACME, BOB.clip(10), "nobody")


def test_speaker_ids_restrict_the_candidates(svc: FakeServices) -> None:
    found = svc.identification.identify(ACME, ALICE.clip(10), speaker_ids=["bob", "carol"])
    assert found.speaker_id is None
    assert {c.speaker_id for c in found.candidates} == {"bob", "carol"}
    found = svc.identification.identify(ACME, ALICE.clip(10), speaker_ids=["carol", "alice", "alice"])
    assert found.speaker_id == "alice" and {c.speaker_id for c in found.candidates} == {"alice", "carol"}
    with pytest.raises(SpeakerNotFound):
        svc.identification.identify(ACME, ALICE.clip(10), speaker_ids=["alice", "nobody"])


def test_the_bar_rises_with_the_number_of_speakers_compared(svc: FakeServices) -> None:
    """One clip, one speaker: against the whole tenant (4), against two (a duplicated id counts
    once), and against that speaker alone (verify). The cosine is the same each time; the score falls
    by exactly the rise of the expected best impostor score."""
    clip = ALICE.clip(10)
    scorer = svc.identification.scorer
    scale = scorer.scale(ACME, *svc.index.cohort(ACME))
    scores: dict[int, float] = {}
    for gallery, ids in ((4, None), (2, ["alice", "bob", "alice"]), (1, ["alice"])):
        found = svc.identification.identify(ACME, clip, speaker_ids=ids)
        assert found.speaker_id == "alice" and found.score is not None
        scores[gallery] = found.score
    assert scores[1] > scores[2] > scores[4]
    assert svc.identification.verify(ACME, clip, "alice").score == scores[1]
    for gallery in (2, 4):
        rise = (scorer.level(scale, gallery) - scorer.level(scale, 1)) / scorer.rule.unit
        assert scores[1] - scores[gallery] == pytest.approx(rise, abs=2e-4)


def test_tenants_see_only_their_own_speakers(svc: FakeServices) -> None:
    # No one enrolled in GLOBEX: the voice is unknown there (no candidates, no score), not an error.
    empty = svc.identification.identify(GLOBEX, ALICE.clip(10))
    assert (empty.speaker_id, empty.score, empty.candidates) == (None, None, [])
    assert empty.speech_seconds == pytest.approx(7.0, abs=0.05)  # the clip was still checked
    stretches = svc.identification.segments(GLOBEX, ALICE.clip(10))
    assert stretches and all(s.speaker_id is None and s.score is None for s in stretches)
    # GLOBEX's "alice" is bob's voice: alice's clip finds no one there, bob's finds its "alice".
    svc.enroll_takes(GLOBEX, "alice", BOB, takes=(5, 6, 7))
    assert svc.identification.identify(GLOBEX, ALICE.clip(10)).speaker_id is None
    found = svc.identification.identify(GLOBEX, BOB.clip(10))
    assert found.speaker_id == "alice" and [c.speaker_id for c in found.candidates] == ["alice"]
    assert not svc.identification.verify(GLOBEX, ALICE.clip(10), "alice").match
    with pytest.raises(SpeakerNotFound):
        svc.identification.identify(GLOBEX, CAROL.clip(10), speaker_ids=["carol"])
    # ACME's answers are untouched by GLOBEX's speaker.
    assert svc.identification.identify(ACME, BOB.clip(10)).speaker_id == "bob"


def test_the_tenant_scale_is_cached_until_its_cohort_changes(svc: FakeServices) -> None:
    scorer = svc.identification.scorer
    clip = CAROL.clip(10)
    before = svc.identification.identify(ACME, clip).score
    scale = scorer.scale(ACME, *svc.index.cohort(ACME))
    assert scorer.scale(ACME, *svc.index.cohort(ACME)) is scale
    assert scale.speakers == 4

    svc.enroll_takes(GLOBEX, "erin", SyntheticVoice(5))  # another tenant: ACME's scale stands
    assert scorer.scale(ACME, *svc.index.cohort(ACME)) is scale
    assert svc.identification.identify(ACME, clip).score == before

    svc.enroll_takes(ACME, "frank", SyntheticVoice(6))  # a new speaker of ACME: rebuilt
    fresh = scorer.scale(ACME, *svc.index.cohort(ACME))
    assert fresh is not scale and fresh.speakers == 5
    after = svc.identification.identify(ACME, clip).score
    # The cached answer is what a scorer with no cache gives on the new cohort.
    uncached = Scorer(scorer.rule)
    centroids = svc.index.cohort(ACME)[1]
    entry = svc.index.lookup(ACME, "carol")
    assert entry is not None
    query = svc.embedder.embed(CAROL.wave(10)[8000:-8000])
    expected = uncached.scores(query, entry.centroid, uncached.build_scale(centroids), gallery=5)[0, 0]
    assert after == pytest.approx(float(expected), abs=2e-3)
    assert after != before

    svc.enrollment.delete_speaker(ACME, "frank")  # and rebuilt again when a member leaves
    assert scorer.scale(ACME, *svc.index.cohort(ACME)).speakers == 4
    assert svc.identification.identify(ACME, clip).score == pytest.approx(before, abs=2e-4)


def test_without_centring_scores_are_plain_cosines_against_the_prior_level() -> None:
    svc = fake_services()
    svc.enroll_takes(ACME, "alice", ALICE)
    rule = svc.identification.scorer.rule
    plain = Scorer(DecisionRule(**{**rule.__dict__, "centring": False}))
    entry = svc.index.lookup(ACME, "alice")
    assert entry is not None
    query = svc.embedder.embed(ALICE.wave(10)[8000:-8000])
    scale = plain.scale(ACME, *svc.index.cohort(ACME))
    expected = (float(entry.centroid @ query) - rule.pair_mean) / rule.unit
    assert float(plain.scores(query, entry.centroid, scale, gallery=1)[0, 0]) == pytest.approx(
        expected, abs=1e-5
    )


def test_who_speaks_when_labels_each_voice_and_leaves_a_stranger_unnamed(svc: FakeServices) -> None:
    # Three 6 s turns without a pause: alice 0.5-6.5 s, a stranger 6.5-12.5 s, bob 12.5-18.5 s.
    lead = 8000  # samples of quiet before and after each take
    turns = [ALICE.wave(20, 6.0)[:-lead], STRANGER.wave(1, 6.0)[lead:-lead], BOB.wave(20, 6.0)[lead:]]
    segments = svc.identification.segments(ACME, as_linear16(np.concatenate(turns)))
    assert [s.speaker_id for s in segments] == ["alice", None, "bob"]
    # Windows are 2 s long: a change of speaker is placed within half a window.
    for segment, start in zip(segments, (0.5, 6.5, 12.5), strict=True):
        assert segment.start == pytest.approx(start, abs=1.0)
        assert segment.end == pytest.approx(start + 6.0, abs=1.0)


def test_a_stretch_carries_the_decision_rules_score_of_its_voice(svc: FakeServices) -> None:
    """One voice's clip is one stretch, its voice that speech's vector: the segment's score is the
    one identify gives the same clip (against the speaker named, or the best one for a stranger)."""
    for voice, name in ((ALICE, "alice"), (STRANGER, None)):
        clip = voice.clip(21)
        [segment] = svc.identification.segments(ACME, clip)
        found = svc.identification.identify(ACME, clip)
        assert segment.speaker_id == found.speaker_id == name
        assert segment.score == found.score != 0 and segment.score is not None
        assert (segment.score >= svc.identification.thresholds.identify) == (name is not None)


def test_a_clipped_clip_is_identified_not_refused(svc: FakeServices) -> None:
    """A loud call clips; the score decides, as for a noisy one (the clipping gate is enrollment's)."""
    loud = as_linear16(40 * ALICE.wave(10))
    found = svc.identification.identify(ACME, loud)
    assert found.candidates and found.speech_seconds > 0
    assert svc.identification.segments(ACME, loud)


def test_too_little_speech_to_identify_is_a_client_error(svc: FakeServices) -> None:
    with pytest.raises(InsufficientSpeech) as refused:
        svc.identification.identify(ACME, ALICE.clip(10, seconds=0.3))
    assert isinstance(refused.value, ServiceError) and refused.value.status == 422


def test_a_short_clip_is_scored_with_the_duration_term_in_identify_and_verify(svc: FakeServices) -> None:
    """The clip's own speech seconds reach the rule: a short clip scores its plain rule score plus
    the duration term, in identify and verify alike; a long one gets none."""
    scorer = svc.identification.scorer
    assert scorer.rule.short_s > 1.5
    entry = svc.index.lookup(ACME, "alice")
    assert entry is not None
    scale = scorer.scale(ACME, *svc.index.cohort(ACME))
    for seconds in (1.5, 7.0):
        clip = ALICE.clip(11, seconds=seconds)
        found = svc.identification.identify(ACME, clip, speaker_ids=["alice"])
        verified = svc.identification.verify(ACME, clip, "alice")
        prepared = svc.identification.frontend.load(clip, svc.identification.limits)
        query = svc.embedder.embed(prepared.speech_wave())
        plain = float(scorer.scores(query, entry.centroid, scale, gallery=1)[0, 0])
        term = float(scorer.duration_term(found.speech_seconds))
        assert (term > 0.3) == (seconds < 3.0)
        assert found.score == pytest.approx(plain + term, abs=2e-3)
        assert verified.score == found.score
