"""ASGI middleware: limits on the request body, security headers, request metrics, HEAD."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl

import anyio
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import send_error
from service.errors import PayloadTooLarge, RequestCancelled, RequestTimeout, ServiceError, Unauthorized

log = logging.getLogger("service.access")

REQUESTS = Counter("speakerid_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "speakerid_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# The refused request's body is left unread: the connection cannot carry another request.
CLOSE = {"Connection": "close"}
HEADERS = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Every route that takes a body is an API route and needs a key (service/api/deps.authenticate).
API_PREFIXES = ("/v1/", "/audio/")
KEY_HEADERS = (b"x-api-key", b"authorization")
KEY_PARAMS = ("apikey", "api_key")


def carries_no_key(scope: Scope) -> bool:
    """An API request with a body and no credential anywhere a key may be: it is refused before its
    body is read (or parsed), which a caller without a key must not be able to make the server do.
    The query is read as the routes read it (names percent-decoded); a proxy's root path is not
    part of the route."""
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    if scope["method"] not in ("POST", "PUT", "PATCH") or not path.startswith(API_PREFIXES):
        return False
    if any(name in KEY_HEADERS and value.strip() for name, value in scope.get("headers", [])):
        return False
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return not any(name in KEY_PARAMS for name, _ in query)


class BodyLimit:
    """Read the request body before the app, within limits of size and time.

    413 for a declared Content-Length over `max_bytes` (before reading any of it) or once a body
    without one (chunked) passes it; 408 when the body stops coming for `idle_timeout_s` or takes
    longer than `total_timeout_s` in all, so a client that sends half a request cannot hold a
    connection and a worker. The app then reads the same messages, as they came.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, idle_timeout_s: float, total_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        try:
            if carries_no_key(scope):
                raise Unauthorized(Unauthorized.MISSING, headers=CLOSE)
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise PayloadTooLarge(self._too_large(), headers=CLOSE)
            messages = await self._read(receive)
        except ServiceError as exc:
            await send_error(scope, receive, send, exc)
            return
        pending = iter(messages)

        async def replay() -> Message:
            # After the body, `receive` is left to say when the client goes away.
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> list[Message]:
        messages: list[Message] = []
        seen = 0
        deadline = time.monotonic() + self.total_timeout_s
        while True:
            wait = min(self.idle_timeout_s, deadline - time.monotonic())
            message = None
            with anyio.move_on_after(max(wait, 0.0)):
                message = await receive()
            if message is None:
                raise RequestTimeout(
                    f"The request body did not arrive within {self.idle_timeout_s:g} s of its last part "
                    f"or {self.total_timeout_s:g} s in all",
                    headers=CLOSE,
                )
            if message["type"] == "http.disconnect":
                # The client hung up before its body was whole: nothing to parse, nobody to answer.
                raise RequestCancelled("The client closed the request before its body arrived")
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise PayloadTooLarge(self._too_large(), headers=CLOSE)
            if not message.get("more_body", False):
                return messages

    def _too_large(self) -> str:
        return f"Request body is larger than {self.max_bytes} bytes"


class SecurityHeaders:
    """On every response, no content-type sniffing; on every response outside the `cacheable`
    path prefixes (the docs' static files), no caching: answers carry tenants' data."""

    def __init__(self, app: ASGIApp, cacheable: tuple[str, ...] = ()) -> None:
        self.app = app
        self.cacheable = cacheable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        extra = HEADERS[:1] if scope["path"].startswith(self.cacheable) else HEADERS

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message = {**message, "headers": headers + [h for h in extra if h[0] not in present]}
            await send(message)

        await self.app(scope, receive, with_headers)


class HeadAsGet:
    """HEAD is answered as GET without the body (RFC 9110), so load balancers' HEAD health checks
    and link checkers work on every GET route; FastAPI's routes take only the methods they name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}
        await self.app(as_get, receive, without_body)
        if "route" in as_get:  # what the router matched, for the metrics outside
            scope["route"] = as_get["route"]


class Metrics:
    """Count and time requests per route template (not per raw path: speaker ids stay out)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            # Any token is a method to the parser (PROPFIND, PURGE, ...): each would be new series.
            method = scope["method"] if scope["method"] in METHODS else "other"
            elapsed = time.perf_counter() - start
            REQUESTS.labels(method, name, str(status)).inc()
            LATENCY.labels(method, name).observe(elapsed)
            # The path only: the query string may carry an API key.
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                },
            )
