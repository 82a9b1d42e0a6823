"""Job and webhook workers: claim a job, run its handler, store the result; then deliver it.

Each step is claimed under a lease in the database (`JobStore`), renewed while the work runs: a
process that dies mid-job stops renewing, and another worker (or this one after a restart) claims
the job again once the lease has run out. A job is run again at most `max_runs` times in all.
Delivery is a separate step with its own retries and threads: one thread claims due results for a
bounded pool of senders, at most `webhook_per_host` attempts to one host at once, so a receiver that
hangs holds up neither the jobs nor the other receivers.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from service.concurrency import Cancellation
from service.config import JobsSettings
from service.egress import Egress
from service.errors import RequestCancelled, ServiceError
from service.jobs import webhooks
from service.jobs.ports import JobRecord, JobStore
from service.storage.database import unavailable

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def host_of(url: str) -> str:
    """Where a webhook goes, as the per-host limit counts it: host and port."""
    try:
        parts = urlsplit(url)
        return f"{(parts.hostname or '').lower()}:{parts.port or ''}"
    except ValueError:
        return url


class JobContext:
    """What a handler gets besides its job: cancellation (the worker is stopping or lost its
    lease) and a place to report progress, 0..1, which the lease renewal writes to the job row."""

    def __init__(self) -> None:
        self.cancel = Cancellation()
        self.progress = 0.0
        self.reported = threading.Event()

    def report(self, fraction: float) -> None:
        self.progress = min(max(fraction, 0.0), 1.0)
        self.reported.set()  # written at once, not at the next renewal


# A job kind's work: the job in, the rest of the webhook body (beside "request_id") out.
Handler = Callable[[JobRecord, JobContext], dict[str, Any]]


def fault(request_id: str, code: str, message: str) -> dict[str, Any]:
    """A failed job's webhook body: the hosted API's fault shape."""
    return {"request_id": request_id, "fault": {"faultstring": message, "detail": {"errorcode": code}}}


class JobWorker:
    def __init__(
        self, store: JobStore, handlers: Mapping[str, Handler], settings: JobsSettings, egress: Egress
    ) -> None:
        self.store = store
        self.handlers = dict(handlers)
        self.settings = settings
        self.egress = egress
        self.name = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_purge = 0.0
        self._lock = threading.Lock()  # guards the two below
        self._running: set[JobContext] = set()  # the jobs under way
        self._in_flight: dict[str, int] = {}  # delivery attempts under way, by host
        self._slots = threading.BoundedSemaphore(settings.webhook_workers)  # free senders
        self._senders: ThreadPoolExecutor | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> JobWorker:
        """`workers` job threads, and one delivery thread handing results to `webhook_workers`
        senders: a job that waits on its `url`, or a receiver that hangs, holds one of them, not
        the queue."""
        self._stopping.clear()
        s = self.settings
        self._slots = threading.BoundedSemaphore(s.webhook_workers)
        self._senders = ThreadPoolExecutor(s.webhook_workers, thread_name_prefix="webhook-send")
        self._threads = [
            *(
                threading.Thread(target=self._loop, args=(self.run_next,), name=f"jobs-{i}", daemon=True)
                for i in range(s.workers)
            ),
            threading.Thread(target=self._loop, args=(self._dispatch,), name="webhooks", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop claiming; running jobs stop at their next check and go back to the queue; attempts
        under way end within their timeout."""
        self._stopping.set()
        with self._lock:
            running = list(self._running)
        for ctx in running:
            ctx.cancel.cancel()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self._senders is not None:
            self._senders.shutdown(wait=True)
            self._senders = None

    def _loop(self, step: Callable[[], bool]) -> None:
        while not self._stopping.is_set():
            try:
                busy = step()
            except Exception as exc:
                if unavailable(exc):  # one line per poll while the database is away, not a traceback
                    log.warning("job worker: database unavailable", extra={"error": type(exc).__name__})
                else:
                    log.exception("job worker step failed")
                busy = False
            if not busy:
                self._stopping.wait(self.settings.poll_seconds)

    # --- jobs ------------------------------------------------------------------------------------

    def run_next(self) -> bool:
        """Claim and run one job; False when there was none."""
        job = self.store.claim(self.name, self.settings.lease_seconds)
        if job is None:
            return False
        if job.runs > self.settings.max_runs:
            message = f"The job was started {job.runs - 1} times without finishing"
            self.store.finish(job.id, self.name, "failed", fault(job.request_id, "job.Abandoned", message))
            return True
        ctx = JobContext()
        with self._lock:  # `stop` sets the flag, then cancels what is in `_running` under this lock
            stopping = self._stopping.is_set()
            if not stopping:
                self._running.add(ctx)
        if stopping:  # claimed while stopping (another thread's job, just given back): give it back
            self.store.release(job.id, self.name)
            return True
        renewing = threading.Event()
        beat = threading.Thread(target=self._renew, args=(job, ctx, renewing), name="job-lease", daemon=True)
        beat.start()
        try:
            state, result = "completed", {"request_id": job.request_id, **self._handler(job)(job, ctx)}
        except RequestCancelled:
            if self._stopping.is_set():
                self.store.release(job.id, self.name)
            return True  # stopping, or the lease went to another worker: theirs now
        except ServiceError as exc:
            state, result = "failed", fault(job.request_id, exc.code, exc.message)
        except Exception:
            log.exception("job failed", extra={"job": job.id, "kind": job.kind})
            state, result = "failed", fault(job.request_id, "service.Error", "Internal error")
        finally:
            renewing.set()
            ctx.reported.set()
            beat.join()
            with self._lock:
                self._running.discard(ctx)
        if not self.store.finish(job.id, self.name, state, result):
            log.warning("job finished after its lease was lost", extra={"job": job.id})
        return True

    def _handler(self, job: JobRecord) -> Handler:
        try:
            return self.handlers[job.kind]
        except KeyError:
            raise ServiceError(f"No handler for jobs of kind {job.kind!r}") from None

    def _renew(self, job: JobRecord, ctx: JobContext, done: threading.Event) -> None:
        every = self.settings.lease_seconds / 3
        while True:
            ctx.reported.wait(every)
            ctx.reported.clear()
            if done.is_set():
                return
            try:
                if not self.store.renew(job.id, self.name, self.settings.lease_seconds, ctx.progress):
                    ctx.cancel.cancel()  # someone else holds it now: stop wasting the model
                    return
            except Exception:
                log.exception("job lease renewal failed", extra={"job": job.id})

    # --- webhooks --------------------------------------------------------------------------------

    def _dispatch(self) -> bool:
        """The delivery thread's step: purge now and then; claim one due result for a free sender
        and hand it over. Only this thread polls, however many senders there are."""
        now = utcnow().timestamp()
        if now - self._last_purge > min(60.0, self.settings.result_ttl_seconds):
            self._last_purge = now
            self.purge()
        if not self._slots.acquire(timeout=self.settings.poll_seconds):
            return True  # every sender busy: look again when one is free
        taken: list[str] = []
        handed = False
        try:
            job = self._claim_delivery(taken)
            if job is None:
                return False
            assert self._senders is not None
            self._senders.submit(self._send, job, taken)
            handed = True
            return True
        finally:
            if not handed:
                self._release_hosts(taken)
                self._slots.release()

    def _send(self, job: JobRecord, taken: list[str]) -> None:
        try:
            self._attempt(job)
        except Exception as exc:
            if unavailable(exc):
                log.warning("webhook attempt: database unavailable", extra={"error": type(exc).__name__})
            else:
                log.exception("webhook attempt failed", extra={"job": job.id})
        finally:
            self._release_hosts(taken)
            self._slots.release()

    def _claim_delivery(self, taken: list[str]) -> JobRecord | None:
        """A due result to a host with fewer than `webhook_per_host` attempts under way in this
        process (its slot noted in `taken`); None when there is none."""
        lease = self.settings.webhook_timeout_s + 30.0
        job = self.store.claim_delivery(self.name, lease, lambda url: self._take_host(url, taken))
        if job is not None and (job.webhook is None or job.result is None):
            return None  # cannot happen: a pending delivery has both
        return job

    def _release_hosts(self, taken: list[str]) -> None:
        with self._lock:
            for host in taken:
                self._in_flight[host] -= 1
                if not self._in_flight[host]:
                    del self._in_flight[host]
        taken.clear()

    def _take_host(self, url: str, taken: list[str]) -> bool:
        """Reserve one of the webhook's host's slots, if one is free (noted in `taken`)."""
        host = host_of(url)
        with self._lock:
            if self._in_flight.get(host, 0) >= self.settings.webhook_per_host:
                return False
            self._in_flight[host] = self._in_flight.get(host, 0) + 1
        taken.append(host)
        return True

    def _attempt(self, job: JobRecord) -> None:
        assert job.webhook is not None and job.result is not None
        secret = self.store.webhook_secret(job.tenant_id)
        body = webhooks.body_of(job.result)
        attempt = webhooks.deliver(
            self.egress, job.webhook, job.request_id, body, secret, self.settings.webhook_timeout_s
        )
        retry_at = None if attempt.delivered else self.next_attempt(job, utcnow())
        self.store.record_attempt(job.id, self.name, attempt, retry_at)
        if not attempt.delivered:
            log.info(
                "webhook attempt failed",
                extra={"job": job.id, "attempt": job.delivery_attempts + 1, "error": attempt.error},
            )

    def next_attempt(self, job: JobRecord, now: datetime) -> datetime | None:
        """Exponential backoff with jitter (half to all of the doubled wait), for a bounded time."""
        s = self.settings
        doublings = min(job.delivery_attempts, 60)  # past that the cap holds anyway; 2.0**1024 overflows
        wait = min(s.webhook_max_backoff_s, s.webhook_backoff_s * 2.0**doublings)
        at = now + timedelta(seconds=wait * random.uniform(0.5, 1.0))
        first = job.first_delivery_at or now  # None: this was the first attempt
        return at if at <= first + timedelta(seconds=s.webhook_retry_seconds) else None

    def purge(self) -> int:
        return self.store.purge(utcnow() - timedelta(seconds=self.settings.result_ttl_seconds))
