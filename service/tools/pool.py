"""Running a tool's independent jobs in a bounded thread pool."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed


def run_bounded(jobs: Sequence[Callable[[], None]], concurrency: int, stop: threading.Event) -> None:
    """Run `jobs` with at most `concurrency` at a time. The first job to raise (or Ctrl-C) sets
    `stop`, so running jobs can end early, drops the jobs not yet started, and is re-raised once the
    running ones have returned."""
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="speakerid-tool") as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
