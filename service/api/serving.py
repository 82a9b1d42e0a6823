"""How uvicorn serves the app: one configuration for `speakerid serve` and the tests' server.

uvicorn closes idle keep-alive connections but has no limit on how long a client may take to send
its request headers: a connection that sends a few bytes now and then (or nothing at all) is kept
open forever, and enough of them exhaust the server. The protocols here close such a connection
with a 408 once `header_timeout_s` has passed since it opened, or since the first byte of a request
that follows another. (Slow bodies are `service.api.middleware.BodyLimit`'s business.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.errors import error_body
from service.config import Settings
from service.errors import RequestTimeout


def _timeout_answer() -> bytes:
    exc = RequestTimeout("The request headers did not arrive in time")
    body = json.dumps(error_body("", exc.code, exc.message)).encode()  # no path yet: the native shape
    head = (
        f"HTTP/1.1 {exc.status} Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "x-content-type-options: nosniff\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class HeaderDeadline(asyncio.Protocol):
    """Mixed into a uvicorn HTTP protocol: close a connection that is not done sending the headers
    of its next request within `header_timeout_s`."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def handle_websocket_upgrade(self) -> None:
        # From here the WebSocket protocol owns the connection (its own idle timeout): a deadline
        # left armed here would write a 408 into the open stream and close it.
        self._upgraded = True
        self._disarm()
        super().handle_websocket_upgrade()  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._upgraded:
            return
        if self._between_requests():
            self._arm()  # from the first byte of this request on; a trickle does not push it back
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle: Any = getattr(self, "cycle", None)
        return cycle is None or bool(cycle.response_complete)

    def _arm(self) -> None:
        if self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        transport: asyncio.Transport | None = getattr(self, "transport", None)
        if self._upgraded or transport is None or transport.is_closing() or not self._between_requests():
            return
        transport.write(_timeout_answer())
        transport.close()


class HttpToolsWithHeaderDeadline(HeaderDeadline, HttpToolsProtocol):
    """uvicorn's fast parser (uvicorn[standard] brings httptools), with the deadline."""


def http_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    return type("HttpProtocol", (HttpToolsWithHeaderDeadline,), {"header_timeout_s": header_timeout_s})


def uvicorn_config(app: FastAPI, settings: Settings, **options: Any) -> uvicorn.Config:
    """`options` go to uvicorn.Config as they are (host, port, lifespan, ...)."""
    return uvicorn.Config(
        app,
        http=http_protocol(settings.http.header_timeout_s),
        server_header=False,  # no "server: uvicorn" banner
        access_log=False,  # the service logs requests itself, without their query strings
        log_config=None,
        **options,
    )
