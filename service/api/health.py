"""Health, readiness and Prometheus metrics: no API key needed (metrics: see `metrics`)."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service import metrics as exported
from service.api.deps import run_blocking
from service.api.schemas import Health
from service.config import Settings
from service.errors import Forbidden, Unauthorized

api = APIRouter(tags=["health"])
PING_TIMEOUT_S = 2.0


@api.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@api.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """Model loaded and warmed, database reachable, index built."""
    services = getattr(request.app.state, "services", None)
    checks = dict(services.checks) if services else {"model": False, "database": False, "index": False}
    if services is not None:
        # A database that does not answer in time is not ready: the probe answers 503 rather than
        # hang with it (the ping's thread is left to finish on its own).
        answered = False
        with anyio.move_on_after(PING_TIMEOUT_S), contextlib.suppress(Exception):
            await run_blocking(services.store.ping, abandon_on_cancel=True)
            answered = True
        checks["database"] = answered
    ready = all(checks.values())
    body = Health(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@api.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics. They show activity across all tenants: with SPK_METRICS_TOKEN set they
    need `Authorization: Bearer <token>`; without it they answer loopback clients only."""
    settings: Settings = request.app.state.settings
    if settings.metrics_token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = settings.metrics_token.get_secret_value()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Unauthorized("/metrics needs Authorization: Bearer with the metrics token")
    elif not _loopback(request.client.host if request.client else None):
        raise Forbidden("/metrics answers loopback clients only unless SPK_METRICS_TOKEN is set")
    return Response(exported.exposition(), media_type=CONTENT_TYPE_LATEST)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
