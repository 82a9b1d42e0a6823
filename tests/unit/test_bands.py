"""Narrowband twins on the fakes: which clips are narrowband, what enrollment stores for each band,
the index per band and the scorer's cache per band. The same on real speech with the real model is
tested in tests/model/test_twins.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from devtools.clips import MEDIUM_CLIP, load_clip
from devtools.fakes import FakeServices, MemoryStore, SyntheticVoice, as_linear16, fake_services
from service.audio import MODEL_RATE, Band
from service.audio.band import (
    TELEPHONE_BAND_HZ,
    TELEPHONE_RATE,
    WIDEBAND_SHARE,
    band_of,
    band_pass,
    high_band_share,
    telephone_band,
)
from service.audio.frontend import AudioInput
from service.config import EnrollmentSettings, Settings
from service.enrollment.maintenance import Twins, recompute_all
from service.enrollment.ports import IndexEntry
from service.enrollment.scoring import DecisionRule, Scorer, TenantScale
from service.storage.index import BandedIndex
from tests.conftest import needs_speech

ALICE, BOB, CAROL = (SyntheticVoice(seed) for seed in (1, 2, 3))
ACME = 1


def call(voice: SyntheticVoice, take: int) -> AudioInput:
    """A take as a phone delivers it: the telephone band, sent as 8 kHz LINEAR16."""
    return as_linear16_at(telephone_band(voice.wave(take))[::2], 8000)


def as_linear16_at(wave: np.ndarray, rate: int) -> AudioInput:
    clip = as_linear16(wave)
    return AudioInput(clip.data, clip.encoding, rate)


def test_the_band_follows_the_source_rate_and_the_power_above_the_telephone_band() -> None:
    wave = ALICE.wave(0)  # tones up to 6 kHz
    assert high_band_share(wave) > 100 * WIDEBAND_SHARE
    assert band_of(MODEL_RATE, wave) == Band.WIDE
    assert band_of(8000, wave) == Band.NARROW  # an 8 kHz source is narrowband whatever it holds
    # 8 kHz audio upsampled before it was sent: a 16 kHz source with nothing above the band.
    phone = telephone_band(wave)
    assert phone.shape == wave.shape and phone.dtype == np.float32
    assert high_band_share(phone) < WIDEBAND_SHARE
    assert band_of(MODEL_RATE, phone) == Band.NARROW
    assert high_band_share(np.zeros(100, dtype=np.float32)) == 0.0


@needs_speech
@pytest.mark.parametrize("gain", [0.1, 4.0])  # too quiet for any biquad to clip; loud enough for each
def test_the_band_pass_is_torchaudios_biquads_with_their_clipping(gain: float) -> None:
    wave = load_clip(MEDIUM_CLIP).as_float()[::2] * gain  # real speech, taken as 8 kHz
    reference = torch.from_numpy(wave)
    for _ in range(2):
        reference = AF.highpass_biquad(reference, TELEPHONE_RATE, TELEPHONE_BAND_HZ[0])
        reference = AF.lowpass_biquad(reference, TELEPHONE_RATE, TELEPHONE_BAND_HZ[1])
    ours = band_pass(wave, TELEPHONE_RATE)
    assert ours.dtype == np.float32 and ours.shape == wave.shape
    # The loud wave is where the clipping shows: the filters are linear below full scale.
    unclipped = band_pass(wave / gain, TELEPHONE_RATE) * gain
    assert (np.abs(unclipped - reference.numpy()).max() > 0.01) == (gain > 1.0)
    # torchaudio runs the filters in float32, scipy in float64
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def twins() -> FakeServices:
    svc = fake_services()
    for name, voice in (("alice", ALICE), ("bob", BOB), ("carol", CAROL)):
        svc.enroll_takes(ACME, name, voice)
    return svc


def test_a_wideband_sample_stores_its_twin_and_the_speaker_a_narrowband_centroid(twins: FakeServices) -> None:
    alice = twins.store.get_speaker(ACME, "alice")
    assert alice is not None and alice.narrow_centroid is not None and alice.centroid is not None
    with twins.store.transaction() as tx:
        samples = tx.samples(alice.id)
    assert len(samples) == 3 and all(s.narrow_vector is not None for s in samples)
    expected = twins.embedder.embed(telephone_band(ALICE.wave(0)[int(0.5 * MODEL_RATE) :]))
    assert float(samples[0].band_vector @ expected) > 0.95  # the twin is the simulated call's vector
    assert float(alice.narrow_centroid @ alice.centroid) < 0.9  # the band moved it
    wide = twins.index.band(Band.WIDE).lookup(ACME, "alice")
    narrow = twins.index.band(Band.NARROW).lookup(ACME, "alice")
    assert wide is not None and narrow is not None
    assert np.allclose(wide.centroid, alice.centroid) and np.allclose(narrow.centroid, alice.narrow_centroid)


def test_a_narrowband_sample_is_its_own_twin(twins: FakeServices) -> None:
    svc = fake_services(store=twins.store.copy())
    svc.enrollment.enroll(ACME, "dave", call(SyntheticVoice(4), 0))
    dave = svc.store.get_speaker(ACME, "dave")
    assert dave is not None and dave.narrow_centroid is None  # the centroid serves both bands
    with svc.store.transaction() as tx:
        assert tx.samples(dave.id)[0].narrow_vector is None


def test_a_call_is_scored_against_the_twins(twins: FakeServices) -> None:
    svc = fake_services(store=twins.store.copy())
    found = svc.identification.identify(ACME, call(ALICE, 10))
    assert found.channel == Band.NARROW and found.speaker_id == "alice"
    check = svc.identification.verify(ACME, call(ALICE, 11), "alice")
    assert check.channel == Band.NARROW and check.match
    assert svc.identification.verify(ACME, call(ALICE, 11), "bob").match is False
    wide = svc.identification.identify(ACME, ALICE.clip(10))
    assert wide.channel == Band.WIDE and wide.speaker_id == "alice"


def test_without_twins_a_call_meets_the_wideband_voiceprint() -> None:
    settings = Settings(enrollment=EnrollmentSettings(narrowband_twins=False))
    svc = fake_services(settings)
    for name, voice in (("alice", ALICE), ("bob", BOB), ("carol", CAROL)):
        svc.enroll_takes(ACME, name, voice)
    assert svc.index.band(Band.NARROW) is svc.index.band(Band.WIDE)  # one index, no second copy
    alice = svc.store.get_speaker(ACME, "alice")
    assert alice is not None and alice.narrow_centroid is None
    found = svc.identification.identify(ACME, call(ALICE, 10))
    with_twins = fake_services(store=_twin_store()).identification.identify(ACME, call(ALICE, 10))
    assert found.channel == Band.NARROW and found.candidates[0].cosine < with_twins.candidates[0].cosine


def _twin_store() -> MemoryStore:
    svc = fake_services()
    for name, voice in (("alice", ALICE), ("bob", BOB), ("carol", CAROL)):
        svc.enroll_takes(ACME, name, voice)
    return svc.store


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v), dtype=np.float32)


def test_the_index_keeps_each_band_with_its_own_search_cohort_and_removal() -> None:
    rng = np.random.default_rng(0)
    wide, narrow = rng.standard_normal((2, 6, 8)).astype(np.float32)
    entries = [
        IndexEntry(i, 1 if i < 4 else 2, f"s{i}", True, _unit(wide[i]), _unit(narrow[i]) if i != 3 else None)
        for i in range(6)
    ]
    index = BandedIndex(8)
    index.replace(entries[:5])
    index.upsert(entries[5])
    hit = index.band(Band.NARROW).search(_unit(narrow[1]), 1, k=1)[0]
    assert hit[0].speaker_id == 1 and hit[1] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(hit[0].centroid, _unit(narrow[1]))
    assert index.band(Band.WIDE).search(_unit(narrow[1]), 1, k=4)[0][1] < 0.99
    # A speaker without a twin has its centroid in both bands; restrictions and tenants hold per band.
    only = index.band(Band.NARROW).search(_unit(wide[3]), 1, k=4, only=[3, 4])
    assert [e.speaker_id for e, _ in only] == [3] and only[0][1] == pytest.approx(1.0, abs=1e-5)
    ids_w, cohort_w = index.band(Band.WIDE).cohort(1)
    ids_n, cohort_n = index.band(Band.NARROW).cohort(1)
    assert list(ids_w) == list(ids_n) == [0, 1, 2, 3]
    assert np.allclose(cohort_n[0], _unit(narrow[0])) and np.allclose(cohort_w[0], _unit(wide[0]))
    assert np.allclose(cohort_n[3], cohort_w[3])
    index.remove(1)
    for band in Band:
        assert index.band(band).lookup(1, "s1") is None and index.band(band).tenant_size(1) == 3
    assert len(index) == 5 and index.band(Band.NARROW).ids() == index.ids()


def test_the_scorer_keeps_a_scale_per_band_of_a_tenant() -> None:
    rng = np.random.default_rng(1)
    scorer = CountingScorer(DecisionRule(np.zeros(8, dtype=np.float32), 3.0, 0.1, 0.1, 3.0, 0.1))
    bands = [(np.arange(4), rng.standard_normal((4, 8)).astype(np.float32)) for _ in range(2)]
    for _ in range(3):
        for ids, cohort in bands:
            scorer.scale(ACME, ids, cohort)
    assert scorer.built == 2  # once per band, then cached side by side


class CountingScorer(Scorer):
    built = 0

    def build_scale(self, cohort: np.ndarray) -> TenantScale:
        self.built += 1
        return super().build_scale(cohort)


def test_rebuild_makes_twins_from_kept_audio_and_keeps_what_is_stored_otherwise() -> None:
    settings = Settings(enrollment=EnrollmentSettings(narrowband_twins=False, store_audio=True))
    svc = fake_services(settings)
    svc.enroll_takes(ACME, "alice", ALICE)
    svc.enrollment.store_audio = False  # bob's samples keep no audio
    svc.enroll_takes(ACME, "bob", BOB)
    twins = Twins(svc.enrollment.frontend, svc.enrollment.embed)
    outside: list[bool] = []

    def twin_of(wave: np.ndarray, rate: int) -> np.ndarray | None:
        # The model runs with no transaction open: another writer gets through meanwhile.
        wrote = threading.Event()

        def write() -> None:
            with svc.store.transaction():
                wrote.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(5)
        outside.append(wrote.is_set())
        return twins(wave, rate)

    assert recompute_all(svc.store, svc.embedder.checksum, svc.enrollment.policy, twin_of) == (2, 2)
    assert outside and all(outside)
    alice, bob = svc.store.get_speaker(ACME, "alice"), svc.store.get_speaker(ACME, "bob")
    assert alice is not None and bob is not None
    with svc.store.transaction() as tx:
        made = tx.samples(alice.id)
        kept = tx.samples(bob.id)
    assert all(s.narrow_vector is not None for s in made) and alice.narrow_centroid is not None
    expected = twins(ALICE.wave(0), MODEL_RATE)
    # The kept audio is the front end's output, filtered once more on the way back in: nearly equal.
    assert expected is not None and float(made[0].band_vector @ expected) > 0.999
    assert all(s.narrow_vector is None for s in kept) and bob.narrow_centroid is None
    assert twins(telephone_band(ALICE.wave(0)), MODEL_RATE) is None  # narrowband audio: no twin
