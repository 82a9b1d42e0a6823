"""The SQL job store: implements `service.jobs.ports.JobStore`.

Claims take the row with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas on one database
never claim one job twice and never wait for each other's claims; on SQLite every write
transaction holds the database's write lock (see `database.py`), which gives the same for one host.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from service.errors import DuplicateRequestId
from service.jobs.ports import Attempt, JobRecord, NewJob
from service.storage.tables import Job, Tenant, WebhookAttempt, utcnow

UNFINISHED = ("queued", "running")
# Due deliveries a claim looks through for one whose host has a free slot (`claim_delivery`).
DELIVERY_CANDIDATES = 32


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite gives datetimes back without their zone; they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _record(row: Job) -> JobRecord:
    return JobRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        request_id=row.request_id,
        kind=row.kind,
        api=row.api,
        state=row.state,
        params=json.loads(row.params),
        audio=row.audio,
        webhook=row.webhook,
        result=json.loads(row.result) if row.result is not None else None,
        progress=row.progress,
        runs=row.runs,
        delivery=row.delivery,
        delivery_attempts=row.delivery_attempts,
        first_delivery_at=_utc(row.first_delivery_at),
        created_at=_utc(row.created_at) or utcnow(),
        finished_at=_utc(row.finished_at),
    )


class SqlJobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def create(self, job: NewJob) -> JobRecord:
        row = Job(
            tenant_id=job.tenant_id,
            request_id=job.request_id,
            kind=job.kind,
            api=job.api,
            state="queued",
            params=json.dumps(job.params),
            audio=job.audio,
            webhook=job.webhook,
            progress=0.0,
            runs=0,
            delivery="none",
            delivery_attempts=0,
        )
        try:
            with self._sessions() as s, s.begin():
                s.add(row)
        except IntegrityError as exc:
            raise DuplicateRequestId(f"A job with request_id {job.request_id!r} exists") from exc
        return _record(row)

    def get(self, tenant_id: int, request_id: str) -> JobRecord | None:
        with self._sessions() as s:
            row = s.scalars(
                select(Job).where(Job.tenant_id == tenant_id, Job.request_id == request_id)
            ).one_or_none()
            return _record(row) if row is not None else None

    def claim(self, worker: str, lease_s: float) -> JobRecord | None:
        now = utcnow()
        due = or_(Job.state == "queued", and_(Job.state == "running", Job.lease_until < now))
        with self._sessions() as s, s.begin():
            row = s.scalars(
                select(Job).where(due).order_by(Job.id).limit(1).with_for_update(skip_locked=True)
            ).one_or_none()
            if row is None:
                return None
            row.state = "running"
            row.runs += 1
            row.worker = worker
            row.lease_until = now + timedelta(seconds=lease_s)
            return _record(row)

    def renew(self, job_id: int, worker: str, lease_s: float, progress: float) -> bool:
        with self._sessions() as s, s.begin():
            done = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.state == "running")
                .values(lease_until=utcnow() + timedelta(seconds=lease_s), progress=progress)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def finish(self, job_id: int, worker: str, state: str, result: dict[str, Any]) -> bool:
        now = utcnow()
        with self._sessions() as s, s.begin():
            row = s.scalars(
                select(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.state == "running")
                .with_for_update()
            ).one_or_none()
            if row is None:
                return False  # another worker took it over after this one's lease ran out
            row.state = state
            row.result = json.dumps(result)
            row.audio = None  # a job's input is kept only until it ends
            row.progress = 1.0
            row.finished_at = now
            row.worker = None
            row.lease_until = None
            if row.webhook:
                row.delivery = "pending"
                row.next_delivery_at = now  # the retry window opens at the first attempt
            return True

    def release(self, job_id: int, worker: str) -> None:
        with self._sessions() as s, s.begin():
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.state == "running")
                .values(state="queued", worker=None, lease_until=None, runs=Job.runs - 1, progress=0.0)
            )

    def claim_delivery(
        self, worker: str, lease_s: float, take: Callable[[str], bool] | None = None
    ) -> JobRecord | None:
        now = utcnow()
        with self._sessions() as s, s.begin():
            due = s.scalars(
                select(Job)
                .where(
                    Job.delivery == "pending",
                    Job.next_delivery_at <= now,
                    or_(Job.lease_until.is_(None), Job.lease_until < now),
                )
                .order_by(Job.next_delivery_at)
                .limit(1 if take is None else DELIVERY_CANDIDATES)
                .with_for_update(skip_locked=True)
            )
            row = next((r for r in due if take is None or take(r.webhook or "")), None)
            if row is None:
                return None
            row.worker = worker
            row.lease_until = now + timedelta(seconds=lease_s)
            return _record(row)

    def record_attempt(self, job_id: int, worker: str, attempt: Attempt, retry_at: datetime | None) -> None:
        with self._sessions() as s, s.begin():
            row = s.get_one(Job, job_id, with_for_update=True)
            row.delivery_attempts += 1
            if row.first_delivery_at is None:
                row.first_delivery_at = utcnow() - timedelta(seconds=attempt.seconds)
            s.add(
                WebhookAttempt(
                    job_id=job_id,
                    attempt=row.delivery_attempts,
                    status_code=attempt.status_code,
                    error=attempt.error[:256] if attempt.error else None,
                    seconds=attempt.seconds,
                    delivered=attempt.delivered,
                )
            )
            # A worker whose lease ran out while it waited on the receiver records its attempt but
            # leaves the schedule to the one that holds the delivery now (or has finished it).
            holds = row.worker == worker and row.delivery == "pending"
            if attempt.delivered and row.delivery == "pending":
                row.delivery = "delivered"
            elif holds and retry_at is None:
                row.delivery = "failed"
            elif holds:
                row.next_delivery_at = retry_at
            if row.worker == worker:
                row.worker = None
                row.lease_until = None

    def attempts(self, job_id: int) -> list[Attempt]:
        with self._sessions() as s:
            rows = s.scalars(
                select(WebhookAttempt).where(WebhookAttempt.job_id == job_id).order_by(WebhookAttempt.id)
            )
            return [Attempt(r.status_code, r.error, r.seconds) for r in rows]

    def purge(self, finished_before: datetime) -> int:
        """Delete jobs finished before the cut-off whose delivery is over (attempts go with them)."""
        with self._sessions() as s, s.begin():
            ids = list(
                s.scalars(
                    select(Job.id).where(
                        Job.state.not_in(UNFINISHED),
                        Job.finished_at < finished_before,
                        Job.delivery != "pending",
                    )
                )
            )
            if ids:
                # Explicit: SQLite cascades only with foreign keys on.
                s.execute(delete(WebhookAttempt).where(WebhookAttempt.job_id.in_(ids)))
                s.execute(delete(Job).where(Job.id.in_(ids)))
            return len(ids)

    # --- webhook secrets -------------------------------------------------------------------------

    def webhook_secret(self, tenant_id: int) -> str:
        """The tenant's signing secret, made on first use."""
        with self._sessions() as s, s.begin():
            tenant = s.get_one(Tenant, tenant_id, with_for_update=True)
            if tenant.webhook_secret is None:
                tenant.webhook_secret = "whsec_" + secrets.token_hex(24)
            return tenant.webhook_secret

    def tenant_webhook_secret(self, tenant: str, *, rotate: bool = False) -> str | None:
        """For operators: a tenant's secret by name (None if no such tenant), replaced first with `rotate`."""
        with self._sessions() as s, s.begin():
            row = s.scalars(select(Tenant).where(Tenant.name == tenant).with_for_update()).one_or_none()
            if row is None:
                return None
            if rotate or row.webhook_secret is None:
                row.webhook_secret = "whsec_" + secrets.token_hex(24)
            return row.webhook_secret
