"""Job and webhook workers: claim a job, run its handler, store the result; then deliver it.

Each step is claimed under a lease in the database (`JobStore`), renewed while the work runs: a
process that dies mid-job stops renewing, and another worker (or this one after a restart) claims
the job again once the lease has run out. A job is run again at most `max_runs` times in all.
Delivery is a separate step with its own retries, so a slow receiver never holds up jobs.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

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
        self._current: JobContext | None = None
        self._threads: list[threading.Thread] = []
        self._last_purge = 0.0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> JobWorker:
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._loop, args=(self.run_next,), name="jobs", daemon=True),
            threading.Thread(
                target=self._loop, args=(self._deliver_and_purge,), name="webhooks", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop claiming; a running job stops at its next check and goes back to the queue."""
        self._stopping.set()
        current = self._current
        if current is not None:
            current.cancel.cancel()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []

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
        self._current = ctx
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
            self._current = None
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

    def _deliver_and_purge(self) -> bool:
        now = utcnow().timestamp()
        if now - self._last_purge > min(60.0, self.settings.result_ttl_seconds):
            self._last_purge = now
            self.purge()
        return self.deliver_next()

    def deliver_next(self) -> bool:
        """One delivery attempt of one due result; False when none was due."""
        lease = self.settings.webhook_timeout_s + 30.0
        job = self.store.claim_delivery(self.name, lease)
        if job is None or job.webhook is None or job.result is None:
            return job is not None
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
        return True

    def next_attempt(self, job: JobRecord, now: datetime) -> datetime | None:
        """Exponential backoff with jitter (half to all of the doubled wait), for a bounded time."""
        s = self.settings
        doublings = min(job.delivery_attempts, 60)  # past that the cap holds anyway; 2.0**1024 overflows
        wait = min(s.webhook_max_backoff_s, s.webhook_backoff_s * 2.0**doublings)
        at = now + timedelta(seconds=wait * random.uniform(0.5, 1.0))
        first = job.first_delivery_at or now
        return at if at <= first + timedelta(seconds=s.webhook_retry_seconds) else None

    def purge(self) -> int:
        return self.store.purge(utcnow() - timedelta(seconds=self.settings.result_ttl_seconds))
