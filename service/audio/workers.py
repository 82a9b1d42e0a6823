"""The front end in worker processes: decode, 16 kHz conversion and speech detection on every core.

In one process the front end's Python holds the interpreter lock while the HTTP layer and the model
wait on it. Here each worker process prepares one clip at a time with its own speech detector and
one torch thread, and hands the 16 kHz samples back through a shared-memory block that it creates
and the server copies out once and unlinks (a pipe would pickle them on both sides). Errors of the
clip (the 4xx of decoding and of the quality figures) come back as themselves.

A worker that dies, or runs past its time, is killed and replaced, and its request gets a 503; a
request whose client went away kills its worker too (its work stops at once) and is replaced the
same way. Workers come from a fork server that has imported the front end once, so a replacement
starts in a fraction of a second.
"""

from __future__ import annotations

import _posixshmem
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from service.concurrency import Cancellation, check
from service.errors import FrontEndLost, RequestCancelled, ServiceError

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a waiting request looks at its worker, its deadline and its cancellation
_PRELOAD = ["service.audio.pipeline", "service.audio.decode"]


@dataclass(frozen=True)
class Job:
    data: bytes
    encoding: str
    sample_rate: int | None
    channels: bool
    source_rate: int | None = None  # `AudioInput.source_rate`
    # The shared block's name, chosen by the server, so it can remove a block its worker made but
    # never handed over (killed past its time, or for a client that left).
    block: str | None = None


@dataclass(frozen=True)
class Prepared:
    """What a worker sends back besides the samples (those are in the shared block `block`)."""

    block: str
    samples: int
    source_rate: int
    speech: list[tuple[float, float]]
    clipped_fraction: float
    snr_db: float
    channel_speech: list[np.ndarray]


def _serve(
    conn: Connection,
    max_seconds: float,
    decode_timeout_s: float,
    vad_threshold: float,
    vad_narrowband_threshold: float | None,
) -> None:
    """A worker's life: one clip at a time until the pipe closes."""
    import torch

    from service.audio.decode import decode
    from service.audio.pipeline import SpeechDetector, prepare

    torch.set_num_threads(1)  # one worker per core
    detector = SpeechDetector(vad_threshold, vad_narrowband_threshold)
    while True:
        try:
            job: Job | None = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            decoded = decode(
                job.data, job.encoding, job.sample_rate, max_seconds=max_seconds, timeout_s=decode_timeout_s
            )
            prepared = prepare(decoded, detector, None, channels=job.channels, source_rate=job.source_rate)
        except ServiceError as error:
            conn.send(("error", type(error), error.message))
            continue
        except Exception as error:  # a bug, not the clip's fault: the server logs it as a 500
            conn.send(("crash", repr(error), None))
            continue
        wave = prepared.wave
        try:
            block = _new_block(job.block, wave.nbytes)
        except OSError as error:
            message = (
                f"No room in shared memory (/dev/shm) for this clip's {wave.nbytes} bytes of samples "
                f"({error.strerror}); the server needs more shared memory"
            )
            conn.send(("error", FrontEndLost, message))
            continue
        try:
            np.ndarray(wave.shape, np.float32, buffer=block.buf)[:] = wave
            figures = Prepared(
                block.name,
                len(wave),
                prepared.source_rate,
                prepared.speech,
                prepared.clipped_fraction,
                prepared.snr_db,
                prepared.channel_speech,
            )
            block.close()
            conn.send(("ok", figures, None))
        except BaseException:  # the server is gone (a broken pipe): nobody will remove the block
            _unlink(block.name)
            raise


def _new_block(name: str | None, size: int) -> SharedMemory:
    """A shared block of `size` bytes whose pages are reserved now: on a full /dev/shm (a container's
    64 MB) this raises ENOSPC, where writing into an unreserved block kills the process (SIGBUS)
    and leaves the block behind. The server removes the block once it has the samples, so this
    process must not count it as its own to clean up."""
    block = SharedMemory(name=name, create=True, size=max(1, size))
    # Unregistered at once: the tracker must not remove it when this worker exits or is killed.
    resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
    try:
        os.posix_fallocate(block._fd, 0, max(1, size))  # type: ignore[attr-defined]
    except OSError:
        block.close()
        _unlink(block.name)
        raise
    return block


def _unlink(name: str) -> None:
    """Remove a shared block by name, if it is there (without the resource tracker's bookkeeping)."""
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink("/" + name.lstrip("/"))


@dataclass(eq=False)  # hashed by identity: one entry per process
class _Worker:
    process: BaseProcess
    conn: Connection
    sending: threading.Thread | None = None  # the thread sending it its job
    conn_closing: bool = False  # set under the pool's lock by the one who closes `conn`


class FrontEndPool:
    """`workers` processes, each preparing one clip at a time. Thread-safe; a request waits for a
    free worker (in arrival order)."""

    def __init__(
        self,
        workers: int,
        *,
        max_seconds: float,
        decode_timeout_s: float,
        vad_threshold: float,
        vad_narrowband_threshold: float | None,
        work_timeout_s: float,
    ) -> None:
        self._args = (max_seconds, decode_timeout_s, vad_threshold, vad_narrowband_threshold)
        self.work_timeout_s = work_timeout_s
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._blocks = itertools.count()
        for _ in range(workers):
            self._idle.put(self._start())

    def _start(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(theirs, *self._args), name="frontend", daemon=True
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        with self._lock:
            self._all.add(worker)
        return worker

    def _replace(self, worker: _Worker, block: str | None = None) -> None:
        """Kill `worker` and start another; `block`: the shared block of the job it had, removed
        if the worker made it and never handed it over."""
        worker.process.kill()
        worker.process.join(5)
        if worker.sending is not None:  # its send fails once the worker is gone: the pipe is free
            worker.sending.join(5)
        self._close_conn(worker)
        if block is not None:
            _unlink(block)
        with self._lock:
            self._all.discard(worker)
            closed = self._closed
        if not closed:
            self._idle.put(self._start())

    def _close_conn(self, worker: _Worker) -> None:
        """Close `worker`'s pipe once: a request replacing it and shutdown may both get here, and two
        closes of one Connection race on its file descriptor (the second got EBADF)."""
        with self._lock:
            if worker.conn_closing:
                return
            worker.conn_closing = True
        worker.conn.close()

    @property
    def pids(self) -> list[int | None]:
        with self._lock:
            return [w.process.pid for w in self._all]

    def prepare(self, job: Job, cancel: Cancellation | None = None) -> tuple[Prepared, np.ndarray]:
        """The worker's figures and the 16 kHz samples (float32, a copy of the shared block)."""
        worker = self._take(cancel)
        job = dataclasses.replace(job, block=f"spk_{os.getpid()}_{next(self._blocks)}")
        # Sent from a thread of its own: a job larger than the pipe's buffer to a worker that does
        # not read (stopped) would block here past the deadline and the client's hang-up.
        worker.sending = threading.Thread(
            target=_send, args=(worker.conn, job), name="frontend-send", daemon=True
        )
        worker.sending.start()
        try:
            kind, payload, message = self._wait(worker, cancel)
        except (RequestCancelled, FrontEndLost):
            self._replace(worker, job.block)
            raise
        except (OSError, EOFError) as error:
            worker.process.join(1)
            log.error("front-end worker %s died (exit code %s)", worker.process.pid, worker.process.exitcode)
            self._replace(worker, job.block)
            raise FrontEndLost() from error
        self._idle.put(worker)
        if kind == "error":
            if payload is FrontEndLost:
                log.error("front-end worker %s: %s", worker.process.pid, message)
            raise payload(message)
        if kind == "crash":
            raise RuntimeError(f"front-end worker failed: {payload}")
        return payload, _take_block(payload)

    def _take(self, cancel: Cancellation | None) -> _Worker:
        while True:
            check(cancel)
            try:
                worker = self._idle.get(timeout=POLL_S * 2)
            except queue.Empty:
                continue
            if worker.process.is_alive():
                return worker
            self._replace(worker)  # died while idle: no request of its own to fail

    def _wait(self, worker: _Worker, cancel: Cancellation | None) -> tuple[str, Any, Any]:
        deadline = time.monotonic() + self.work_timeout_s
        while not worker.conn.poll(POLL_S):
            check(cancel)
            if not worker.process.is_alive():
                log.error(
                    "front-end worker %s died (exit code %s)", worker.process.pid, worker.process.exitcode
                )
                raise FrontEndLost()
            if time.monotonic() > deadline:
                log.error("front-end worker %s ran past %s s", worker.process.pid, self.work_timeout_s)
                raise FrontEndLost()
        result: tuple[str, Any, Any] = worker.conn.recv()
        return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
        for worker in workers:  # never blocking: a stopped worker's full pipe must not hold shutdown
            threading.Thread(
                target=_send, args=(worker.conn, None), name="frontend-stop", daemon=True
            ).start()
        for worker in workers:
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
            self._close_conn(worker)
        with self._lock:
            self._all.clear()


def _send(conn: Connection, message: Job | None) -> None:
    """Send, quietly failing once the worker is gone (killed past its time: the caller has said so)."""
    with contextlib.suppress(OSError, ValueError):
        conn.send(message)


def _take_block(prepared: Prepared) -> np.ndarray:
    block = SharedMemory(name=prepared.block)
    try:
        wave = np.ndarray((prepared.samples,), np.float32, buffer=block.buf).copy()
    finally:
        block.close()
        block.unlink()
    return wave
