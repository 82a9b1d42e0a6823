"""Health, readiness and Prometheus metrics: no API key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import run_blocking
from service.api.schemas import Health

api = APIRouter(tags=["health"])


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
        try:
            await run_blocking(services.store.ping)
        except Exception:
            checks["database"] = False
    ready = all(checks.values())
    body = Health(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@api.get("/metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
