"""The one place where errors become HTTP answers.

Routes raise `ServiceError`s; these handlers, and the ASGI middleware that refuses a request before
the app sees it (`send_error`), render every error through `render_error`: in the hosted API's
fault shape on the DeepAffects-compatible routes and as ``{"error": {"code", "message"}}`` on the
native ones. Errors that are not `ServiceError`s (an unknown route, a bug) become one first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from service.errors import (
    BadRequest,
    InvalidSpeakerId,
    MethodNotAllowed,
    RouteNotFound,
    ServiceError,
    shown,
)
from service.storage.database import outage

log = logging.getLogger(__name__)

# The hosted API's route families (the job status lives under /transaction).
COMPAT_PREFIXES = ("/audio/generic/api", "/transaction/generic/api")


def error_body(path: str, code: str, message: str) -> dict[str, object]:
    """The error shape of the route family that `path` belongs to."""
    if path.startswith(COMPAT_PREFIXES):
        return {"fault": {"faultstring": message, "detail": {"errorcode": code}}}
    return {"error": {"code": code, "message": message}}


def render_error(request: Request, exc: ServiceError) -> JSONResponse:
    """The answer for `exc`, in the shape of the route family of the request's path."""
    body = error_body(request.url.path, exc.code, exc.message)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def send_error(scope: Scope, receive: Receive, send: Send, exc: ServiceError) -> None:
    """Answer with `exc` from ASGI middleware, outside the app's exception handlers."""
    await render_error(Request(scope), exc)(scope, receive, send)


# pydantic's words for "the body is not a JSON object"; they name the model's class.
NOT_AN_OBJECT = ("model_attributes_type", "model_type", "dict_type")


def validation_summary(errors: Sequence[Any]) -> str:
    """What was wrong with a request body, briefly, quoting none of the client's values."""
    parts = []
    for e in errors[:5]:
        if tuple(e.get("loc", ())) in ((), ("body",)) and e.get("type") in NOT_AN_OBJECT:
            parts.append("the body must be a JSON object (sent as Content-Type: application/json)")
            continue
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{shown(where)}: {shown(e.get('msg', 'invalid'), 120)}")
    return "; ".join(parts)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        log.error("request failed", extra={"path": request.url.path, "code": exc.code})
    return render_error(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any({"speakerId", "speakerIds"} & set(map(str, e.get("loc", ()))) for e in errors):
        return render_error(request, InvalidSpeakerId())
    return render_error(request, BadRequest("Invalid request: " + validation_summary(errors)))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # Starlette's own: an unknown path or method (routes raise ServiceErrors, never these).
    known: dict[int, type[ServiceError]] = {404: RouteNotFound, 405: MethodNotAllowed}
    kind = known.get(exc.status_code, BadRequest if exc.status_code < 500 else ServiceError)
    return render_error(request, kind(shown(exc.detail, 200), headers=dict(exc.headers or {})))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database that does not answer is a 503 with Retry-After and one log line (an outage would
    otherwise write two tracebacks per request); any other database error is unexpected."""
    refused = outage(exc, path=request.url.path)
    return render_error(request, refused) if refused is not None else await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    # Rendered outside every middleware (Starlette's outermost layer): the headers that
    # `SecurityHeaders` adds elsewhere are set here.
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
    return render_error(request, ServiceError(headers=headers))


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
