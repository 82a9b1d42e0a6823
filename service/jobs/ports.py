"""What the job workers need from storage; `service.storage.jobs` implements it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class NewJob:
    tenant_id: int
    request_id: str
    kind: str
    api: str
    params: dict[str, Any]
    audio: bytes | None
    webhook: str | None


@dataclass(frozen=True)
class JobRecord:
    id: int
    tenant_id: int
    request_id: str
    kind: str
    api: str
    state: str  # queued, running, completed, failed
    params: dict[str, Any]
    audio: bytes | None
    webhook: str | None
    result: dict[str, Any] | None  # what the webhook gets
    progress: float
    runs: int
    delivery: str  # none, pending, delivered, failed
    delivery_attempts: int
    first_delivery_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Attempt:
    """One webhook delivery attempt and what came of it."""

    status_code: int | None
    error: str | None
    seconds: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class JobStore(Protocol):
    def create(self, job: NewJob) -> JobRecord: ...

    def get(self, tenant_id: int, request_id: str) -> JobRecord | None: ...

    def claim(self, worker: str, lease_s: float) -> JobRecord | None:
        """The oldest queued job, or a running one whose lease has expired; now this worker's."""
        ...

    def renew(self, job_id: int, worker: str, lease_s: float, progress: float) -> bool: ...

    def finish(self, job_id: int, worker: str, state: str, result: dict[str, Any]) -> bool:
        """Record the result, drop the input audio, queue the delivery; False if the lease was lost."""
        ...

    def release(self, job_id: int, worker: str) -> None:
        """Give an unfinished job back (this process is stopping): it is claimed again at once."""
        ...

    def claim_delivery(
        self, worker: str, lease_s: float, take: Callable[[str], bool] | None = None
    ) -> JobRecord | None:
        """The earliest due delivery no one holds, now this worker's; with `take`, the earliest of
        the first few due whose webhook URL `take` accepts (it may reserve a slot: a True is kept)."""
        ...

    def record_attempt(self, job_id: int, worker: str, attempt: Attempt, retry_at: datetime | None) -> None:
        """Log `attempt`; delivered, or retried at `retry_at`, or (None) given up."""
        ...

    def purge(self, finished_before: datetime) -> int: ...

    def webhook_secret(self, tenant_id: int) -> str: ...
