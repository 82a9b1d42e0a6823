"""Prometheus metrics beyond per-route request counts (those are in `service.api.middleware`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence, Sized

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from service.embedding.batcher import DynamicBatcher
from service.enrollment.ports import Embedder

# The default registry also describes the interpreter (python_info: version and implementation)
# and its garbage collector: nothing an operator needs, something an attacker may.
for _collector in (PLATFORM_COLLECTOR, GC_COLLECTOR):
    with contextlib.suppress(KeyError):
        REGISTRY.unregister(_collector)

EMBED_SECONDS = Histogram(
    "speakerid_embedding_seconds",
    "Time in the model per call",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
)
EMBED_BATCH = Histogram(
    "speakerid_embedding_batch_size", "Waveforms per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
INDEX_SPEAKERS = Gauge("speakerid_index_speakers", "Speakers in this process's index")
CANCELLED = Counter(
    "speakerid_cancelled_requests_total",
    "Requests whose client hung up before the answer: their work stopped at its next check",
    ["route"],
)
MODEL_THREADS = Gauge(
    "speakerid_model_threads", "torch's intra-op thread count in the thread that ran the last forward pass"
)
QUEUE_DEPTH = Gauge("speakerid_batcher_queue_depth", "Waveforms waiting for the model (GPU batcher)")


def exposition() -> bytes:
    """What /metrics serves: every metric of the process's registry, in Prometheus' text format."""
    return generate_latest(REGISTRY)


def timed_embed_batch(
    fn: Callable[[Sequence[np.ndarray]], np.ndarray],
) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    def wrapper(waves: Sequence[np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        try:
            return fn(waves)
        finally:
            EMBED_SECONDS.observe(time.perf_counter() - start)
            EMBED_BATCH.observe(len(waves))

    return wrapper


def watch_index(index: Sized) -> None:
    INDEX_SPEAKERS.set_function(lambda: float(len(index)))


def watch_model(embedder: Embedder) -> None:
    MODEL_THREADS.set_function(lambda: float(embedder.threads_used))


def watch_queue(batcher: DynamicBatcher) -> None:
    QUEUE_DEPTH.set_function(lambda: float(batcher.depth))
