"""The API docs pages (/docs: Swagger UI, /redoc: ReDoc) with their scripts and styles served from
here, out of the `fastapi-offline` package, instead of from a public CDN: the pages work on a
machine without internet access, and no third-party script runs next to the API keys typed in."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

ASSETS = "/docs/assets"
_FILES = Path(fastapi_offline.__file__).parent / "static"
# API keys are typed into these pages: no other site may frame them (clickjacking). Their inline
# start-up script rules out a script policy; framing is what can be closed.
NOT_FRAMED = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"}


def install(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets; the app must be made with docs_url=redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=_FILES), name="docs-assets")

    def where(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "")
        return f"{root}{app.openapi_url}", f"{root}{ASSETS}"

    async def swagger_ui(request: Request) -> HTMLResponse:
        spec, assets = where(request)
        page = get_swagger_ui_html(
            openapi_url=spec,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            # Swagger UI would otherwise send the document's address to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers.update(NOT_FRAMED)
        return page

    async def redoc(request: Request) -> HTMLResponse:
        spec, assets = where(request)
        page = get_redoc_html(
            openapi_url=spec,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(NOT_FRAMED)
        return page

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
