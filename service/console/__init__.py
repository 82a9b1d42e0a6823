"""The operator console: a few static files (HTML, CSS, a JavaScript module) served at /console.

The page talks to the native /v1 API with the API key the operator types in; nothing is fetched
from outside the service, so it works on a machine without internet access. Its answers carry a
Content-Security-Policy that allows only the service's own scripts, styles and API, and the
microphone for this origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
# blob: for playing back what was just recorded; everything else from this origin only. connect-src
# 'self' also covers the live view's ws:/wss: socket to this host (CSP Level 3), so no scheme is added.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "media-src 'self' blob:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = (
    (b"content-security-policy", POLICY.encode()),
    (b"permissions-policy", b"microphone=(self)"),
    (b"referrer-policy", b"no-referrer"),
)


class _Policy:
    """The console's files with its security headers (the API routes keep their own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        await self.app(scope, receive, with_policy)


def install(app: FastAPI) -> None:
    """Serve the console at /console/ (a request for /console is redirected there)."""
    app.mount(PREFIX, _Policy(StaticFiles(directory=STATIC, html=True)), name="console")
