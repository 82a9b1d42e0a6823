"""The dynamic batcher's behaviour: grouping, limits, order of results, admission, cancellation, failure.

These test the batching mechanics with a stand-in model whose output encodes its input; the batcher
with the real model is checked against direct embedding in tests/model/test_ecapa.py.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.embedding.batcher import BatchLimits, DynamicBatcher
from service.errors import Overloaded


class Recorder:
    """A stand-in model: returns [length, first sample] per waveform and records every batch."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.fail = fail
        self.entered = threading.Event()

    def __call__(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append([len(w) for w in waves])
        if self.fail:
            raise RuntimeError("device fell over")
        return np.array([[len(w), w[0]] for w in waves], dtype=np.float32)


def wave(n: int, tag: float = 0.0) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[0] = tag
    return out


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, BatchLimits(max_batch=16, max_wait_ms=50)).start()
    try:
        lengths = [16000 + 800 * i for i in range(40)]
        with ThreadPoolExecutor(16) as pool:
            results = list(
                pool.map(lambda i: batcher.embed_batch([wave(lengths[i], float(i))])[0], range(40))
            )
    finally:
        batcher.stop()
    for i, vector in enumerate(results):
        assert vector[0] == lengths[i] and vector[1] == float(i)
    assert sum(len(b) for b in model.batches) == 40
    assert max(len(b) for b in model.batches) > 1, "concurrent requests should have been batched"
    assert all(len(b) <= 16 for b in model.batches)
    assert all(b == sorted(b) for b in model.batches), "each batch is sorted by length"


def test_audio_budget_splits_batches() -> None:
    gate = threading.Event()
    model = Recorder(gate)
    batcher = DynamicBatcher(model, BatchLimits(max_batch=64, max_audio_seconds=3.0, max_wait_ms=200)).start()
    try:
        futures = [batcher.submit(wave(16000, i)) for i in range(7)]  # 7 s of audio, 3 s per pass
        gate.set()
        assert [f.result(10)[1] for f in futures] == list(range(7))
    finally:
        batcher.stop()
    assert all(sum(b) <= 3 * 16000 for b in model.batches)
    assert sum(len(b) for b in model.batches) == 7


def test_full_queue_refuses_at_once() -> None:
    gate = threading.Event()
    model = Recorder(gate)
    batcher = DynamicBatcher(model, BatchLimits(max_batch=1, max_queue=2, max_wait_ms=0)).start()
    try:
        running = batcher.submit(wave(100))
        assert model.entered.wait(5)  # the worker is busy with the first request
        queued = [batcher.submit(wave(100)) for _ in range(2)]
        with pytest.raises(Overloaded) as refused:
            batcher.submit(wave(100))
        assert refused.value.status == 429
        gate.set()
        assert running.result(5)[0] == 100 and all(f.result(5)[0] == 100 for f in queued)
    finally:
        gate.set()
        batcher.stop()


def test_cancelled_requests_never_reach_the_model() -> None:
    gate = threading.Event()
    model = Recorder(gate)
    batcher = DynamicBatcher(model, BatchLimits(max_batch=1, max_wait_ms=0)).start()
    try:
        first = batcher.submit(wave(111))
        assert model.entered.wait(5)
        abandoned = batcher.submit(wave(222))
        kept = batcher.submit(wave(333))
        assert abandoned.cancel()
        gate.set()
        assert first.result(5)[0] == 111 and kept.result(5)[0] == 333
    finally:
        batcher.stop()
    assert [222] not in model.batches
    assert [b for batch in model.batches for b in batch] == [111, 333]


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_runs() -> None:
    gate = threading.Event()
    model = Recorder(gate, fail=True)
    batcher = DynamicBatcher(model, BatchLimits(max_batch=8, max_wait_ms=100)).start()
    try:
        futures = [batcher.submit(wave(100 + i)) for i in range(3)]
        gate.set()
        for f in futures:
            with pytest.raises(RuntimeError, match="device fell over"):
                f.result(5)
        model.fail = False
        assert batcher.embed_batch([wave(500, 7.0)])[0].tolist() == [500.0, 7.0]
    finally:
        batcher.stop()


def test_two_workers_keep_two_batches_in_flight_and_each_request_gets_its_own_result() -> None:
    both_in = threading.Event()
    active: list[int] = []

    def model(waves: Sequence[np.ndarray]) -> np.ndarray:
        active.append(1)
        if len(active) >= 2:
            both_in.set()
        both_in.wait(10)  # the first batch holds the device until a second one is being prepared
        return np.array([[len(w), w[0]] for w in waves], dtype=np.float32)

    batcher = DynamicBatcher(model, BatchLimits(max_batch=4, max_wait_ms=20), workers=2).start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: batcher.embed_batch([wave(1000 + i, float(i))])[0], range(8)))
    finally:
        batcher.stop()
    assert both_in.is_set(), "the second worker should have run a batch while the first was busy"
    for i, vector in enumerate(results):
        assert vector[0] == 1000 + i and vector[1] == float(i)
