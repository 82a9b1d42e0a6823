"""What the service shows to anyone who asks: metrics, the API docs, response headers, and error
bodies that must not carry internals or echo what a client sent."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.conftest import LiveServer, b64, flac_body, needs_speech

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
CLIP = "librispeech/test-other/367/367-130732-0002.flac"
TOKEN = "metrics-token-0123456789"


@contextlib.contextmanager
def app_client(settings: Settings, client_host: str = "127.0.0.1") -> Iterator[TestClient]:
    """The app in process, as seen from `client_host`, without its start-up (the routes here need
    no model or database: TestClient runs the lifespan only when entered)."""
    client = TestClient(create_app(settings), client=(client_host, 40000))
    try:
        yield client
    finally:
        client.close()


# --- /metrics ------------------------------------------------------------------------------------


def test_metrics_without_a_token_answer_loopback_only() -> None:
    with app_client(Settings()) as local:
        assert local.get("/metrics").status_code == 200
    with app_client(Settings(), "203.0.113.7") as remote:
        refused = remote.get("/metrics")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "auth.Forbidden"
    assert "speakerid_" not in refused.text


def test_metrics_with_a_token_need_it_from_everywhere() -> None:
    settings = Settings(metrics_token=TOKEN)
    for host in ("127.0.0.1", "203.0.113.7"):
        with app_client(settings, host) as client:
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get("/metrics", params={"token": TOKEN}).status_code == 401
            allowed = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert allowed.status_code == 200
            assert "speakerid_requests_total" in allowed.text


def test_metrics_leave_out_the_python_and_platform_details() -> None:
    with app_client(Settings()) as local:
        text = local.get("/metrics").text
    assert "python_info" not in text
    assert "python_gc" not in text
    assert "platform" not in text.lower()


# --- /docs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_nothing_from_other_hosts(page: str) -> None:
    with app_client(Settings()) as client:
        html = client.get(page)
        assert html.status_code == 200
        assert not re.search(r"https?://", html.text), re.findall(r"https?://[^\s\"']+", html.text)
        assets = re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"]([^'"]+)['"]""", html.text)
        assets = [a for a in assets if not a.startswith(("#", "data:"))]
        assert any(a.endswith(".js") for a in assets), assets
        for asset in assets:
            answer = client.get(asset)
            assert answer.status_code == 200, asset
            assert answer.content


# --- headers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anonymous(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


@needs_speech
@pytest.mark.model
def test_every_answer_says_nosniff_and_names_no_server(client: httpx.Client, anonymous: httpx.Client) -> None:
    answers = {
        "enroll": client.post(ENROLL, json=flac_body(CLIP, "headers")),
        "list": client.get("/v1/speakers"),
        "no key": anonymous.get("/v1/speakers"),
        "unknown speaker": client.get("/v1/speakers/nobody"),
        "bad json": client.post("/v1/identify", content=b"{", headers={"Content-Type": "application/json"}),
        "no route": client.get("/nowhere"),
        "health": anonymous.get("/healthz"),
        "docs": anonymous.get("/docs"),
        "openapi": anonymous.get("/openapi.json"),
    }
    for name, answer in answers.items():
        assert answer.headers.get("x-content-type-options") == "nosniff", name
        assert "server" not in answer.headers, (name, answer.headers.get("server"))
    for name in ("enroll", "list", "no key", "unknown speaker", "bad json"):
        assert answers[name].headers.get("cache-control") == "no-store", name


@needs_speech
@pytest.mark.model
def test_head_is_answered_as_get_without_a_body(client: httpx.Client, anonymous: httpx.Client) -> None:
    for who, path in ((anonymous, "/healthz"), (anonymous, "/readyz"), (client, "/v1/speakers")):
        got, head = who.get(path), who.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert anonymous.head("/v1/speakers").status_code == 401  # the key is still asked for
    assert client.head(ENROLL).status_code == 405  # a POST route is no GET route


@needs_speech
@pytest.mark.model
def test_the_openapi_document_lists_every_way_to_send_the_key(anonymous: httpx.Client) -> None:
    schemes = anonymous.get("/openapi.json").json()["components"]["securitySchemes"].values()
    found = {(s["type"], s.get("in"), s.get("name") or s.get("scheme")) for s in schemes}
    assert found == {
        ("apiKey", "query", "apikey"),  # the hosted API's spelling, which its client sends
        ("apiKey", "query", "api_key"),
        ("apiKey", "header", "X-API-Key"),
        ("http", None, "bearer"),
    }


# --- error bodies --------------------------------------------------------------------------------


@needs_speech
@pytest.mark.model
def test_a_huge_encoding_name_is_not_echoed(client: httpx.Client) -> None:
    name = "\x00\x1b[31mX" + "Y" * 100_000
    # Headerless bytes: a container's signature would be decoded as what it is, whatever the name.
    body = {**flac_body(CLIP, "echo"), "encoding": name, "content": b64(b"\x01\x02" * 2000)}
    answer = client.post(ENROLL, json=body)
    assert answer.status_code == 400
    message = answer.json()["fault"]["faultstring"]
    assert len(answer.content) < 1000
    assert "Y" * 41 not in message
    assert "\x00" not in message and "\x1b" not in message


@needs_speech
@pytest.mark.model
@pytest.mark.parametrize("encoding", ["WAV", "MP3", "FLAC", "OGG_OPUS", "M4A"])
def test_undecodable_audio_says_so_without_ffmpeg_internals(client: httpx.Client, encoding: str) -> None:
    garbage = bytes(range(256)) * 64
    body = {**flac_body(CLIP, "garbage"), "encoding": encoding, "content": b64(garbage)}
    answer = client.post(ENROLL, json=body)
    assert answer.status_code == 400, answer.text
    fault = answer.json()["fault"]
    assert fault["detail"]["errorcode"] == "audio.Undecodable"
    message = fault["faultstring"]
    assert len(message) <= 120, message
    for internal in ("Errno", "Invalid data", "demux", "wav:", "mp3:", "ogg:", "mov:", "flac:", "<none>"):
        assert internal not in message, message
