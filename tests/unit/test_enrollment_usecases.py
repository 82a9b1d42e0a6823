"""EnrollmentService wired as the service wires it, on the fakes of devtools.fakes and the real faiss
index: no HTTP, no model, no database, no speech sets. What the real model does on real speech is
tested in tests/api, tests/model and tests/security."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from devtools.fakes import FakeServices, SyntheticVoice, as_linear16, fake_services
from service.audio.frontend import AudioInput
from service.concurrency import Cancellation
from service.enrollment.service import SIMILAR_VOICE_WARNING
from service.errors import (
    ClippedAudio,
    DuplicateRecording,
    DuplicateSample,
    InsufficientSpeech,
    NoisyAudio,
    RequestCancelled,
    SampleNotFound,
    ServiceError,
    SpeakerMismatch,
    SpeakerNotFound,
    UndecodableAudio,
)

ALICE, BOB, CAROL = SyntheticVoice(1), SyntheticVoice(2), SyntheticVoice(3)
ACME, GLOBEX = 1, 2  # tenant row ids


@pytest.fixture
def svc() -> FakeServices:
    return fake_services()


def written(svc: FakeServices) -> tuple[int, int, int]:
    """What the store holds: speakers, samples, changes logged."""
    return len(svc.store.speaker_keys()), svc.store.sample_count(), svc.store.last_change_seq()


def test_three_diverse_takes_complete_a_speaker_step_by_step(svc: FakeServices) -> None:
    first = svc.enrollment.enroll(ACME, "alice", ALICE.clip(0))
    assert (first.status, first.samples, first.spread) == ("enrolling", 1, 0.0)
    assert first.missing == ["more samples", "more speech", "more diverse samples"]
    assert first.last_sample is not None and first.last_sample.speech_seconds == pytest.approx(7.0, abs=0.05)
    entry = svc.index.lookup(ACME, "alice")
    assert entry is not None and not entry.complete  # a candidate from its first sample on

    second = svc.enrollment.enroll(ACME, "alice", ALICE.clip(1))
    assert second.missing == ["more samples", "more speech"]
    assert first.progress < second.progress < 1.0

    third = svc.enrollment.enroll(ACME, "alice", ALICE.clip(2))
    assert (third.status, third.samples, third.missing, third.progress) == ("complete", 3, [], 1.0)
    assert third.speech_seconds >= 20.0 and 0.022 <= third.spread <= 0.35
    entry = svc.index.lookup(ACME, "alice")
    assert entry is not None and entry.complete
    assert svc.enrollment.status(ACME, "alice") == third
    assert written(svc) == (1, 3, 3)


def test_takes_too_alike_wait_for_a_more_diverse_one(svc: FakeServices) -> None:
    """Enough samples and speech, but a spread under the minimum: not complete until a take that
    differs more arrives."""
    for take in range(3):
        status = svc.enrollment.enroll(ACME, "alice", ALICE.clip(take, spread=0.22))
    assert (status.samples, status.status, status.missing) == (3, "enrolling", ["more diverse samples"])
    assert status.spread < 0.022
    status = svc.enrollment.enroll(ACME, "alice", ALICE.clip(3))
    assert (status.status, status.samples) == ("complete", 4)
    assert status.spread >= 0.022


def test_a_recording_enrolled_a_moment_ago_is_found_before_the_index_has_it(
    svc: FakeServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same recording sent as two ids at once: the second's transaction can follow the first's
    commit before this process's index (or another replica's, within its follow interval) holds it.
    Speakers changed since the index's floor are checked from the database."""
    monkeypatch.setattr(svc.enrollment, "after_commit", lambda: None)  # no catch-up: the index lags
    svc.enrollment.enroll(ACME, "alice", ALICE.clip(0))
    assert svc.index.lookup(ACME, "alice") is None
    with pytest.raises(DuplicateRecording):
        svc.enrollment.enroll(ACME, "mallory", ALICE.clip(0))
    assert svc.store.get_speaker(ACME, "mallory") is None


def test_the_same_recording_again_is_refused_even_quieter_and_noisier(svc: FakeServices) -> None:
    svc.enrollment.enroll(ACME, "alice", ALICE.clip(0))
    before = written(svc)
    with pytest.raises(DuplicateSample):
        svc.enrollment.enroll(ACME, "alice", ALICE.clip(0))
    wave = ALICE.wave(0)
    copy = 0.5 * wave + 0.002 * np.random.default_rng(0).standard_normal(len(wave)).astype(np.float32)
    with pytest.raises(DuplicateSample):
        svc.enrollment.enroll(ACME, "alice", as_linear16(copy))
    assert written(svc) == before


def test_a_recording_of_another_speaker_is_refused_and_leaves_no_trace(svc: FakeServices) -> None:
    svc.enroll_takes(ACME, "alice", ALICE)
    before = written(svc)
    with pytest.raises(DuplicateRecording) as refused:
        svc.enrollment.enroll(ACME, "mallory", ALICE.clip(1))
    assert "alice" not in refused.value.message
    assert svc.store.get_speaker(ACME, "mallory") is None  # the speaker row made for it rolled back
    assert svc.index.lookup(ACME, "mallory") is None
    assert written(svc) == before
    # Another take of the same voice is no copy: one person may hold two ids (a warning says so).
    status = svc.enroll_takes(ACME, "alias", ALICE, takes=(3, 4, 5))
    assert status.complete and status.warnings == [SIMILAR_VOICE_WARNING]
    assert svc.enrollment.status(ACME, "alice").warnings == [SIMILAR_VOICE_WARNING]
    listed, total = svc.enrollment.list_speakers(ACME)
    assert total == 2 and [s.warnings for s in listed] == [None, None]


def test_another_voice_is_refused_while_enrolling_and_once_complete(svc: FakeServices) -> None:
    svc.enrollment.enroll(ACME, "alice", ALICE.clip(0))
    with pytest.raises(SpeakerMismatch, match="does not match"):
        svc.enrollment.enroll(ACME, "alice", BOB.clip(0))
    svc.enroll_takes(ACME, "alice", ALICE, takes=(1, 2))
    before = written(svc)
    with pytest.raises(SpeakerMismatch, match=r"at least 4 "):  # the verify threshold, once complete
        svc.enrollment.enroll(ACME, "alice", BOB.clip(1))
    assert written(svc) == before
    assert svc.enrollment.status(ACME, "alice").samples == 3


def test_delete_removes_the_speaker_its_samples_and_its_index_entry(svc: FakeServices) -> None:
    svc.enroll_takes(ACME, "alice", ALICE)
    svc.enroll_takes(ACME, "bob", BOB)
    svc.enrollment.delete_speaker(ACME, "alice")
    assert svc.store.get_speaker(ACME, "alice") is None
    assert svc.store.sample_count() == 3  # bob's
    assert svc.index.lookup(ACME, "alice") is None and svc.index.tenant_size(ACME) == 1
    bob = svc.store.get_speaker(ACME, "bob")
    assert bob is not None and svc.index.cohort(ACME)[0].tolist() == [bob.id]  # the score cohort too
    with pytest.raises(SpeakerNotFound):
        svc.enrollment.status(ACME, "alice")
    with pytest.raises(SpeakerNotFound):
        svc.enrollment.delete_speaker(ACME, "alice")
    # The id is free again, and its old recordings are no one's: enrolling them starts afresh.
    again = svc.enrollment.enroll(ACME, "alice", ALICE.clip(0))
    assert (again.samples, again.status) == (1, "enrolling")


def test_removing_samples_recomputes_the_speaker_and_the_last_one_removes_it(svc: FakeServices) -> None:
    svc.enroll_takes(ACME, "alice", ALICE)
    last = svc.enrollment.status(ACME, "alice").last_sample
    assert last is not None
    svc.enrollment.delete_sample(ACME, "alice", last.sample_id)
    status = svc.enrollment.status(ACME, "alice")
    assert (status.samples, status.status) == (2, "enrolling")
    entry = svc.index.lookup(ACME, "alice")
    assert entry is not None and not entry.complete
    with pytest.raises(SampleNotFound):
        svc.enrollment.delete_sample(ACME, "alice", last.sample_id)
    for _ in range(2):
        remaining = svc.enrollment.status(ACME, "alice").last_sample
        assert remaining is not None
        svc.enrollment.delete_sample(ACME, "alice", remaining.sample_id)
    assert svc.store.get_speaker(ACME, "alice") is None and svc.index.lookup(ACME, "alice") is None
    assert written(svc)[:2] == (0, 0)


def test_tenants_hold_their_own_speakers_under_the_same_ids(svc: FakeServices) -> None:
    svc.enroll_takes(ACME, "alice", ALICE)
    # The same id, and even the same recordings, in another tenant: a speaker of its own.
    other = svc.enrollment.enroll(GLOBEX, "alice", ALICE.clip(0))
    assert (other.samples, other.status) == (1, "enrolling")
    svc.enrollment.enroll(GLOBEX, "bob", BOB.clip(0))
    assert [s.speaker_id for s in svc.enrollment.list_speakers(GLOBEX)[0]] == ["alice", "bob"]
    assert svc.enrollment.list_speakers(ACME)[1] == 1
    svc.enrollment.delete_speaker(GLOBEX, "alice")
    assert svc.enrollment.status(ACME, "alice").samples == 3
    entry = svc.index.lookup(ACME, "alice")
    assert entry is not None and entry.complete
    with pytest.raises(SpeakerNotFound):
        svc.enrollment.status(GLOBEX, "alice")


def test_list_is_sorted_and_paged(svc: FakeServices) -> None:
    for name, voice in (("carol", CAROL), ("alice", ALICE), ("bob", BOB)):
        svc.enrollment.enroll(ACME, name, voice.clip(0))
    page, total = svc.enrollment.list_speakers(ACME, offset=1, limit=1)
    assert total == 3 and [s.speaker_id for s in page] == ["bob"]
    assert page[0].last_sample == svc.enrollment.status(ACME, "bob").last_sample is not None
    assert [s.speaker_id for s in svc.enrollment.list_speakers(ACME)[0]] == ["alice", "bob", "carol"]


def _noisy() -> AudioInput:
    wave = ALICE.wave(0)
    return as_linear16(wave + 0.05 * np.random.default_rng(1).standard_normal(len(wave)).astype(np.float32))


UNFIT: dict[str, tuple[Callable[[], AudioInput], type[ServiceError]]] = {
    "odd-linear16": (lambda: AudioInput(b"\x01\x02\x03", "LINEAR16", 16_000), UndecodableAudio),
    "not-flac": (lambda: AudioInput(b"not audio at all", "FLAC"), UndecodableAudio),
    "short": (lambda: ALICE.clip(0, seconds=0.6), InsufficientSpeech),
    "silence": (lambda: as_linear16(np.zeros(32_000, dtype=np.float32)), InsufficientSpeech),
    "clipped": (lambda: as_linear16(40 * ALICE.wave(0)), ClippedAudio),
    "noisy": (_noisy, NoisyAudio),
}


@pytest.mark.parametrize("case", UNFIT)
def test_unfit_audio_is_a_client_error_and_writes_nothing(svc: FakeServices, case: str) -> None:
    audio, error = UNFIT[case]
    svc.enrollment.enroll(ACME, "alice", ALICE.clip(1))
    before = written(svc)
    with pytest.raises(error) as refused:
        svc.enrollment.enroll(ACME, "alice", audio())
    assert 400 <= refused.value.status < 500
    assert written(svc) == before


def test_a_cancelled_enrollment_writes_nothing(svc: FakeServices) -> None:
    cancel = Cancellation()
    cancel.cancel()
    with pytest.raises(RequestCancelled):
        svc.enrollment.enroll(ACME, "alice", ALICE.clip(0), cancel)
    assert written(svc) == (0, 0, 0)
