"""Bounded work per request, without the model: filtering in blocks, embedding in bounded calls,
the compute thread, cancellation."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from service.audio import MODEL_RATE
from service.audio.decode import DecodedAudio
from service.audio.pipeline import to_mono_16k
from service.concurrency import Cancellation, ComputeThread, beside
from service.embedding.bounded import BoundedEmbedding, EmbedBudget, pieces
from service.errors import RequestCancelled


@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100])
def test_filtering_in_blocks_gives_the_whole_clip_result(rate: int) -> None:
    rng = np.random.default_rng(rate)
    samples = (rng.standard_normal((2, int(rate * 23.4) + 5)) * 0.2 + 0.05).astype(np.float32)
    audio = DecodedAudio(samples, rate)
    whole, clipped_whole = to_mono_16k(audio, block_samples=10**12)
    blocks, clipped_blocks = to_mono_16k(audio, block_samples=rate * 5)
    assert blocks.shape == whole.shape and clipped_blocks == clipped_whole
    # float32 rounding of the IIR filter: the whole-clip result itself is this far from float64's
    np.testing.assert_allclose(blocks, whole, atol=5e-4)


class FakeModel:
    """`embed_batch` that records its calls; a wave's vector is [mean, length in seconds, 1]."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.append([len(w) for w in waves])
        return np.array([[float(np.mean(w)), len(w) / MODEL_RATE, 1.0] for w in waves], dtype=np.float32)


def test_pieces_are_near_equal_and_cover_the_wave() -> None:
    assert pieces(100, 100) == [(0, 100)]
    bounds = pieces(1001, 100)
    assert len(bounds) == 11 and bounds[0][0] == 0 and bounds[-1][1] == 1001
    assert all(b - a <= 100 and b - a >= 90 for a, b in bounds)
    assert all(x[1] == y[0] for x, y in itertools.pairwise(bounds))


def test_calls_stay_within_the_budget_and_short_waves_are_untouched() -> None:
    model = FakeModel()
    budget = EmbedBudget(max_batch=4, max_seconds=6.0, chunk_seconds=3.0)
    embed = BoundedEmbedding(model, budget)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(MODEL_RATE * s)).astype(np.float32) for s in [2, 2, 1, 2.5, 2, 2, 0.7]]
    vectors = embed(waves)
    assert vectors.shape == (len(waves), 3)
    for call in model.calls:
        assert len(call) <= budget.max_batch
        assert len(call) * max(call) <= budget.max_seconds * MODEL_RATE
    np.testing.assert_array_equal(vectors, model(waves))  # one piece each: the model's own vectors


def test_two_pieces_of_one_length_share_a_call_past_the_budget() -> None:
    model = FakeModel()
    embed = BoundedEmbedding(model, EmbedBudget(max_batch=8, max_seconds=16.0, chunk_seconds=16.0))
    rng = np.random.default_rng(1)
    speech = rng.standard_normal(MODEL_RATE * 10).astype(np.float32)
    twin = rng.standard_normal(MODEL_RATE * 10).astype(np.float32)
    vectors = embed([speech, twin])  # an enrollment's speech and its twin: 20 s, no padding
    assert model.calls == [[len(speech)] * 2]
    np.testing.assert_array_equal(vectors, model([speech, twin]))
    model.calls.clear()
    embed([speech] * 3)  # only a pair goes past the budget
    assert model.calls == [[len(speech)] * 2, [len(speech)]]
    model.calls.clear()
    embed([speech[: MODEL_RATE * 4]] * 6)  # short pieces of one length keep the budget: 4 per call
    assert model.calls == [[MODEL_RATE * 4] * 4, [MODEL_RATE * 4] * 2]
    model.calls.clear()
    embed([speech, speech[:-1]])  # one sample apart: the shorter would be padded, so the budget holds
    assert model.calls == [[len(speech) - 1], [len(speech)]]
    model.calls.clear()
    embed([np.zeros(MODEL_RATE * 32, dtype=np.float32)])  # long audio is still cut in 16 s pieces
    assert model.calls == [[MODEL_RATE * 16] * 2]


def test_a_long_wave_is_the_length_weighted_mean_of_its_pieces() -> None:
    model = FakeModel()
    embed = BoundedEmbedding(model, EmbedBudget(max_batch=8, max_seconds=10.0, chunk_seconds=10.0))
    wave = np.concatenate([np.full(MODEL_RATE * 15, 1.0), np.full(MODEL_RATE * 10, -1.0)]).astype(np.float32)
    vector = embed([wave])[0]
    assert all(max(call) <= 10 * MODEL_RATE for call in model.calls)
    assert sum(len(c) for c in model.calls) == 3  # 25 s in pieces of at most 10 s
    assert vector[0] == pytest.approx(float(wave.mean()), abs=1e-6)
    assert vector[1] == pytest.approx(25 / 3, abs=1e-4) and vector[2] == pytest.approx(1.0)


def test_cancellation_stops_before_the_next_call() -> None:
    cancel = Cancellation()
    calls = 0

    def model(waves: Sequence[np.ndarray]) -> np.ndarray:
        nonlocal calls
        calls += 1
        cancel.cancel()  # the client leaves during the first call
        return np.zeros((len(waves), 3), dtype=np.float32)

    embed = BoundedEmbedding(model, EmbedBudget(max_batch=2, max_seconds=4.0, chunk_seconds=2.0))
    with pytest.raises(RequestCancelled):
        embed([np.zeros(MODEL_RATE * 2, dtype=np.float32)] * 10, cancel)
    assert calls == 1


def test_the_compute_thread_runs_calls_on_one_thread_and_passes_errors_back() -> None:
    compute = ComputeThread("test-compute")
    seen = {compute.run(threading.get_ident) for _ in range(3)}
    assert seen == {compute.ident} and compute.ident != threading.get_ident()
    assert compute.run(lambda: compute.run(lambda: 7)) == 7  # a call from the thread itself runs at once
    with pytest.raises(ZeroDivisionError):
        compute.run(lambda: 1 / 0)


def test_a_cancelled_call_still_waiting_for_its_turn_is_dropped() -> None:
    compute = ComputeThread("test-compute")
    busy, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> bool:
        busy.set()
        return release.wait(10)

    blocker = threading.Thread(target=compute.run, args=(hold,))
    blocker.start()
    assert busy.wait(10)
    cancel = Cancellation()
    threading.Timer(0.2, cancel.cancel).start()
    with pytest.raises(RequestCancelled):
        compute.run(ran.append, "late", cancel=cancel)
    release.set()
    blocker.join(10)
    compute.run(ran.append, "next")
    assert ran == ["next"]


def test_work_beside_runs_on_another_thread_and_passes_errors_back() -> None:
    started, release = threading.Event(), threading.Event()

    def light() -> int:
        started.set()
        release.wait(10)
        return threading.get_ident()

    running = beside(light)
    assert started.wait(10)  # it runs while this thread goes on
    release.set()
    assert running.result(10) != threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        beside(lambda: 1 / 0).result(10)
