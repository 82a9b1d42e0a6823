"""Process-wide coordination of CPU-heavy work, and the cancellation of work nobody waits for.

On a CPU, torch (resampling, speech detection, the model) runs on one OS thread, `compute`, one call
at a time, in the order the calls came:

- one call at a time: two concurrent torch calls each use every core and oversubscribe them, which
  costs far more than it gains;
- on one thread: torch's thread count, like OpenMP's, belongs to the OS thread that set it, and every
  thread that runs torch keeps its own team of OpenMP workers. Calls from many request threads meant
  many teams, whose idle workers spin after each call and take the cores from the team at work, and
  a request thread that first ran torch before the count was set kept the old count;
- in arrival order: a long request comes back once per batch and queues behind whoever came
  meanwhile, so a short request waits for at most one batch of each request ahead of it.

Decoding, database and index work run freely in the request threads; `beside` runs a request's
light numpy work that the model call does not need on another thread while that request waits for
the model.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from service.errors import RequestCancelled

T = TypeVar("T")

# How often a caller waiting for its turn looks at its cancellation.
CANCEL_POLL_S = 0.1
# Threads for `beside`: its jobs take milliseconds, so a few serve many requests at once.
BESIDE_WORKERS = 4


class Cancellation:
    """Set when whoever asked for the work has gone away (an HTTP client that hung up); the use
    cases look at it between their steps and stop with `RequestCancelled`. Thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `RequestCancelled` once cancelled."""
        if self._event.is_set():
            raise RequestCancelled()


def check(cancel: Cancellation | None) -> None:
    if cancel is not None:
        cancel.check()


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any]


class ComputeThread:
    """One daemon thread that runs the calls given to `run`, one at a time, first come first served.

    Started on first use. A call made from the thread itself runs at once (no deadlock when one
    compute call makes another).
    """

    def __init__(self, name: str = "compute") -> None:
        self.name = name
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    @property
    def ident(self) -> int | None:
        """The OS thread's identifier, once started."""
        return self._thread.ident if self._thread is not None else None

    def run(self, fn: Callable[..., T], *args: Any, cancel: Cancellation | None = None) -> T:
        """`fn(*args)` on the compute thread, after the calls queued before it; blocks until done.
        With `cancel`, a call still waiting for its turn when it is set is dropped (RequestCancelled)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        check(cancel)
        job = _Job(fn, args, Future())
        self._started().put(job)
        while True:
            try:
                result: T = job.future.result(timeout=CANCEL_POLL_S if cancel is not None else None)
                return result
            except FutureTimeout:
                if cancel is not None and cancel.cancelled and job.future.cancel():
                    cancel.check()

    def _started(self) -> queue.SimpleQueue[_Job]:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
        return self._queue

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller gave up waiting
            try:
                job.future.set_result(job.fn(*job.args))
            except BaseException as exc:
                job.future.set_exception(exc)


compute = ComputeThread()


_beside = ThreadPoolExecutor(max_workers=BESIDE_WORKERS, thread_name_prefix="beside")


def beside(fn: Callable[..., T], *args: Any) -> Future[T]:
    """`fn(*args)` started on another thread, for pure work (no torch, no writes) that can run while
    the caller waits for the model; the caller takes `.result()` when it needs it, which raises what
    `fn` raised. A caller that stops first just drops the future: the work has no effects."""
    return _beside.submit(fn, *args)
