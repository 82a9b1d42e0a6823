"""Typed dependencies: the wired services, the caller's tenant, and blocking-work offloading."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from service import metrics
from service.concurrency import Cancellation
from service.config import Settings
from service.diarization.service import DiarizationService
from service.embedding.batcher import DynamicBatcher
from service.enrollment.identification import IdentificationService
from service.enrollment.ports import Embedder
from service.enrollment.service import EnrollmentService
from service.errors import NotReady, RateLimited, RequestCancelled, Unauthorized
from service.storage.index import BandedIndex
from service.storage.repository import SqlStore, TenantKey
from service.storage.sync import IndexFollower

T = TypeVar("T")


@dataclass
class Runtime:
    """The parts behind the use cases that the process itself runs and stops: routes never touch
    them (the use cases do); start-up, shutdown, the change follower and operators' checks do."""

    engine: Engine
    embedder: Embedder
    index: BandedIndex
    follower: IndexFollower
    batcher: DynamicBatcher | None  # only where requests share forward passes (a GPU by default)
    stop_frontend: Callable[[], None] | None = None  # the audio front end's worker processes

    def close(self) -> None:
        if self.stop_frontend is not None:
            self.stop_frontend()
        if self.batcher is not None:
            self.batcher.stop()
        self.engine.dispose()


@dataclass
class Services:
    """Everything a route may use, built once by `create_app()`'s start-up."""

    settings: Settings
    store: SqlStore
    enrollment: EnrollmentService
    identification: IdentificationService
    runtime: Runtime
    diarization: DiarizationService
    checks: dict[str, bool] = field(default_factory=dict)
    limiter: KeyRateLimiter | None = None


# How often a request whose work is running looks whether its client is still there.
DISCONNECT_POLL_S = 0.25


async def run_blocking(fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
    """The one way routes run blocking work (decode, model, database, faiss) off the event loop;
    `abandon_on_cancel`: a cancelled caller returns at once, the work finishing on its own."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel)


async def run_for_client(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """`run_blocking(fn, *args, cancel)` for work worth stopping when nobody waits for it any more:
    `cancel` (a `Cancellation`) is set once the client has hung up, and `fn` stops at its next check
    (before the model's next batch) with RequestCancelled."""
    cancel = Cancellation()

    async def watch() -> None:
        while not await request.is_disconnected():
            await anyio.sleep(DISCONNECT_POLL_S)
        cancel.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await run_blocking(fn, *args, cancel)
    except RequestCancelled:
        metrics.CANCELLED.labels(getattr(request.scope.get("route"), "path", "unmatched")).inc()
        raise
    finally:
        watcher.cancel()


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise NotReady("The service is still starting")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

# Each scheme has its own name: OpenAPI keys schemes by name, and two unnamed query keys would
# leave only the last one (`api_key`) in the document.
_query_key = APIKeyQuery(
    name="apikey", scheme_name="apikey", auto_error=False, description="API key (hosted API's spelling)"
)
_query_key_alt = APIKeyQuery(name="api_key", scheme_name="api_key", auto_error=False, description="API key")
_header_key = APIKeyHeader(name="X-API-Key", scheme_name="X-API-Key", auto_error=False, description="API key")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")


class KeyRateLimiter:
    """Sliding one-minute window per key, in memory (per process)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key_id: str) -> None:
        if self.per_minute <= 0:
            return
        with self._lock:
            self._hit(key_id, time.monotonic())

    def _hit(self, key_id: str, now: float) -> None:
        window = self._hits.setdefault(key_id, deque())
        while window and now - window[0] >= 60.0:
            window.popleft()
        if len(window) >= self.per_minute:
            retry = max(1, int(60.0 - (now - window[0])) + 1)
            raise RateLimited(
                f"Rate limit of {self.per_minute} requests per minute exceeded",
                headers={"Retry-After": str(retry)},
            )
        window.append(now)


def one_key(*given: str | None) -> str | None:
    """The request's API key from wherever it came (query, header, bearer token); two different
    keys in one request are refused rather than one of them picked (which tenant would it be?)."""
    keys = {k for k in given if k}
    if len(keys) > 1:
        raise Unauthorized("Two different API keys in one request: send one")
    return keys.pop() if keys else None


def authenticate(
    services: ServicesDep,
    apikey: Annotated[str | None, Security(_query_key)] = None,
    api_key: Annotated[str | None, Security(_query_key_alt)] = None,
    header: Annotated[str | None, Security(_header_key)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> TenantKey:
    key = one_key(apikey, api_key, header, bearer.credentials if bearer else None)
    if not key:
        raise Unauthorized(Unauthorized.MISSING)
    tenant = services.store.authenticate(key)
    if tenant is None:
        raise Unauthorized("Invalid or revoked API key")
    if services.limiter is not None:
        services.limiter.hit(tenant.key_id)
    return tenant


TenantDep = Annotated[TenantKey, Depends(authenticate)]
