"""Process-wide coordination of CPU-heavy work.

torch (resampling, speech detection, the model) runs one call at a time per process: on a CPU two
concurrent torch calls each start their own thread team and oversubscribe the cores, which costs far
more than it gains. Decoding and database work run freely in other threads.

A request whose client has gone away carries a set `Cancellation`: its work stops at the next check.
"""

from __future__ import annotations

import threading

from service.errors import RequestCancelled

compute_lock = threading.Lock()


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
