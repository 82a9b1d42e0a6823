"""A dynamic batcher for the GPU path: concurrent requests share one forward pass.

Requests (16 kHz waveforms) wait in a bounded queue; a worker thread takes what has arrived within
`max_wait_ms`, up to `max_batch` waveforms and `max_audio_seconds` of audio, drops requests whose
caller gave up (cancelled futures), sorts the rest by length so that padding wastes little, and runs
them through the model in one call. A full queue refuses at once (429) instead of growing latency
without bound; a batch that fails fails every request in it with that error. On a CPU batching does
not pay (the model is compute-bound either way), so the service uses it only on a GPU by default.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from service.audio import MODEL_RATE
from service.errors import Overloaded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int = 64
    max_audio_seconds: float = 640.0
    max_wait_ms: float = 5.0
    max_queue: int = 2048


@dataclass
class _Request:
    wave: np.ndarray
    future: Future[np.ndarray]


class DynamicBatcher:
    def __init__(
        self,
        embed_batch: Callable[[Sequence[np.ndarray]], np.ndarray],
        limits: BatchLimits | None = None,
        workers: int = 1,
    ) -> None:
        self._embed_batch = embed_batch
        self.limits = limits or BatchLimits()
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=self.limits.max_queue)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"embedding-batcher-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        self._collecting = threading.Lock()  # one worker gathers a batch at a time
        self._carry: _Request | None = None  # a request that did not fit the last batch

    def start(self) -> DynamicBatcher:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, wave: np.ndarray) -> Future[np.ndarray]:
        """Queue one waveform; the future resolves to its ``(dim,)`` vector. Raises `Overloaded`."""
        request = _Request(wave, Future())
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise Overloaded(f"The embedding queue is full ({self.limits.max_queue} waiting)") from None
        return request.future

    def embed_batch(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """The embedder's surface: blocks until every waveform's vector is ready."""
        futures: list[Future[np.ndarray]] = []
        try:
            futures.extend(self.submit(w) for w in waves)
            return np.stack([f.result() for f in futures])
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    # --- worker ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._collecting:
                batch = self._collect()
            if batch:
                self._forward(batch)

    def _collect(self) -> list[_Request]:
        first = self._carry
        self._carry = None
        if first is None:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                return []
        batch = [first]
        seconds = len(first.wave) / MODEL_RATE
        deadline = time.monotonic() + self.limits.max_wait_ms / 1000
        while len(batch) < self.limits.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            extra = len(nxt.wave) / MODEL_RATE
            if seconds + extra > self.limits.max_audio_seconds:
                self._carry = nxt
                break
            batch.append(nxt)
            seconds += extra
        # A cancelled future means its caller left: drop it before it costs a forward pass.
        return [r for r in batch if r.future.set_running_or_notify_cancel()]

    def _forward(self, requests: list[_Request]) -> None:
        """Sorted by length, cut where padding to the chunk's longest would pass the audio budget."""
        requests.sort(key=lambda r: len(r.wave))
        budget = self.limits.max_audio_seconds * MODEL_RATE
        chunk: list[_Request] = []
        for r in requests:
            if chunk and (len(chunk) + 1) * len(r.wave) > budget:
                self._run_chunk(chunk)
                chunk = []
            chunk.append(r)
        if chunk:
            self._run_chunk(chunk)

    def _run_chunk(self, chunk: list[_Request]) -> None:
        try:
            vectors = self._embed_batch([r.wave for r in chunk])
        except Exception as exc:
            log.warning("embedding batch failed", extra={"size": len(chunk), "error": repr(exc)})
            for r in chunk:
                r.future.set_exception(exc)
            return
        for r, vector in zip(chunk, vectors, strict=True):
            r.future.set_result(vector)
