"""One tenant's long clips cannot starve another's short ones, and the model runs with the thread
count it was given: on the thread that runs it, whatever ran torch before."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from service.audio import pipeline
from service.concurrency import ComputeThread, compute
from service.embedding.ecapa import EcapaEmbedder, usable_cores
from tests.conftest import LiveServer, flac_body, make_settings, needs_speech, new_key

pytestmark = pytest.mark.alone  # run with the machine to itself (scripts/test.sh)


def test_a_short_request_waits_for_at_most_one_batch_of_a_long_one() -> None:
    shared = ComputeThread("test-sharing")
    order: list[str] = []
    short_asked = threading.Event()
    long_started = threading.Event()

    def batch(name: str) -> None:
        order.append(name)
        if name == "long-3":
            long_started.set()
            assert short_asked.wait(10)  # the short request arrives while this batch runs

    def long_request() -> None:
        for i in range(20):
            shared.run(batch, f"long-{i}")

    def short_request() -> None:
        assert long_started.wait(10)
        short_asked.set()
        shared.run(batch, "short")

    threads = [threading.Thread(target=long_request), threading.Thread(target=short_request)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    waited = order.index("short") - order.index("long-3") - 1  # long batches that went first
    assert waited <= 1, order
    assert len(order) == 21


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[LiveServer]:
    # As in `speakerid serve`: importing silero-vad set torch to one thread, and the thread that runs
    # the model ran torch before the service set its count.
    compute.run(torch.set_num_threads, 1)
    live = LiveServer(make_settings(tmp_path_factory.mktemp("threads")), embedder)
    live.start()
    yield live
    live.stop()


@needs_speech
@pytest.mark.model
def test_the_model_runs_with_the_configured_threads_on_its_own_thread(
    server: LiveServer, embedder: EcapaEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = server.settings.torch_threads or usable_cores()
    vad_threads: list[tuple[int | None, int]] = []
    threads_for = pipeline.torch_threads

    @contextlib.contextmanager
    def watched(count: int) -> Iterator[None]:
        with threads_for(count):
            vad_threads.append((threading.get_ident(), torch.get_num_threads()))
            yield

    monkeypatch.setattr(pipeline, "torch_threads", watched)
    ran_on: list[int] = []
    forward = embedder._forward_padded

    def recorded(*args: Any) -> Any:
        ran_on.append(threading.get_ident())
        return forward(*args)

    monkeypatch.setattr(embedder, "_forward_padded", recorded)
    with server.client(new_key(server.settings, "acme")) as client:
        path = "librispeech/test-other/367/367-130732-0002.flac"
        assert client.post("/v1/speakers/alice/enrollments", json=flac_body(path)).status_code == 201
        threads = [
            threading.Thread(target=client.post, args=("/v1/identify",), kwargs={"json": flac_body(path)})
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        gauge = client.get("/metrics").text
    # torch's count as the thread that ran the forward pass saw it (measured inside that thread)
    assert embedder.threads_used == expected
    assert f"speakerid_model_threads {float(expected)}" in gauge
    assert set(ran_on) == {compute.ident}, "the model ran outside the compute thread"
    # Speech detection: on the same thread, one torch thread (more only cost).
    assert vad_threads and all(t == (compute.ident, 1) for t in vad_threads)
    assert compute.run(torch.get_num_threads) == expected  # restored after detection
    assert np.isfinite(embedder.embed(np.zeros(16_000, dtype=np.float32))).all()
