"""The HTTP layer around the routes, on the app without its lifespan (no model or database):
HEAD answered as GET, and request metrics labelled by route template and a bounded set of methods."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from service.api.middleware import REQUESTS, BodyLimit
from service.config import Settings
from service.main import create_app


def counted(method: str, route: str, status: str) -> float:
    return float(REQUESTS.labels(method, route, status)._value.get())


def test_head_is_counted_under_its_route_and_odd_methods_share_one_label(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    before = counted("HEAD", "/healthz", "200"), counted("other", "/healthz", "405")
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    assert client.request("PROPFIND", "/healthz").status_code == 405
    assert counted("HEAD", "/healthz", "200") == before[0] + 1  # not "unmatched"
    assert counted("other", "/healthz", "405") == before[1] + 1  # not a series per method
    labels = {tuple(s.labels.values()) for metric in REQUESTS.collect() for s in metric.samples}
    assert not any("PROPFIND" in label for label in labels)


def test_the_docs_pages_may_not_be_framed(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    for page in ("/docs", "/redoc"):
        answer = client.get(page)
        assert answer.status_code == 200
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert answer.headers["x-frame-options"] == "DENY"


def test_an_api_request_without_any_key_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    native = client.post("/v1/identify", content=b"{not json")
    assert native.status_code == 401 and native.json()["error"]["code"] == "auth.InvalidKey"
    compat = client.post("/audio/generic/api/v1/sync/diarization/enroll", content=b"x" * 100)
    assert compat.status_code == 401
    assert compat.json()["fault"]["detail"]["errorcode"] == "auth.InvalidKey"
    for answer in (native, compat):
        assert answer.headers["www-authenticate"] == 'Bearer realm="speakerid"'
        assert answer.headers["connection"] == "close"  # the body was left unread
    # A key anywhere it may be lets the request through to the routes (here, not started: 503).
    for params, headers in (
        ({"apikey": "k"}, {}),
        ({"api_key": "k"}, {}),
        ({}, {"X-API-Key": "k"}),
        ({}, {"Authorization": "Bearer k"}),
    ):
        through = client.post("/v1/identify", content=b"{not json", params=params, headers=headers)
        assert through.status_code == 503, (params, headers)
    # The names as the routes read them, percent-decoded.
    assert client.post("/v1/identify?api%5Fkey=k", content=b"{not json").status_code == 503
    assert client.get("/v1/speakers").status_code == 503  # no body: the route's own check


def body_limit_answer(
    path: str, query: bytes, headers: list[tuple[bytes, bytes]], parts: list[Message]
) -> Message:
    """What BodyLimit (25 MB) sends first for a POST whose body comes as `parts` (none: it must not
    be read); the app behind it must not be called."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app was called")

    async def receive() -> Message:
        assert parts, "the body was read"
        return parts.pop(0)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": path, "query_string": query, "headers": headers}
    asyncio.run(BodyLimit(app, 25_000_000, 30, 60)(scope, receive, send))
    return sent[0]


def test_the_body_of_a_request_without_any_key_is_never_received() -> None:
    headers = [(b"content-length", b"20000000"), (b"x-api-keys", b"k")]
    answer = body_limit_answer("/v1/identify", b"apikeyx=1&sampleRate=8000", headers, [])
    assert answer["type"] == "http.response.start" and answer["status"] == 401


def test_a_database_that_does_not_answer_is_a_503_with_retry_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    app = create_app(Settings(data_dir=tmp_path))

    def down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused\nand a second line"))

    def broken() -> None:
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    app.add_api_route("/v1/down", down)
    app.add_api_route("/audio/generic/api/v1/down", down)
    app.add_api_route("/v1/broken", broken)
    client = TestClient(app, raise_server_exceptions=False)
    native = client.get("/v1/down")
    assert native.status_code == 503 and native.json()["error"]["code"] == "service.DatabaseUnavailable"
    assert native.headers["retry-after"] == "5"
    compat = client.get("/audio/generic/api/v1/down")
    assert compat.status_code == 503
    assert compat.json()["fault"]["detail"]["errorcode"] == "service.DatabaseUnavailable"
    # One line, no traceback, for an outage; any other database error is still a 500.
    outage = [r for r in caplog.records if r.getMessage() == "database unavailable"]
    assert len(outage) == 2 and all(r.exc_info is None for r in outage)
    assert client.get("/v1/broken").status_code == 500


def test_a_client_that_hangs_up_mid_body_is_a_cancelled_request_not_a_server_error() -> None:
    """A raw upload cut off half way raised ClientDisconnect in the route: a 500 with two tracebacks."""
    parts: list[Message] = [
        {"type": "http.request", "body": b"fLaC" + b"\0" * 1000, "more_body": True},
        {"type": "http.disconnect"},
    ]
    headers = [(b"content-type", b"audio/flac"), (b"x-api-key", b"k")]
    assert body_limit_answer("/v1/speakers/a/enrollments", b"", headers, parts)["status"] == 499
