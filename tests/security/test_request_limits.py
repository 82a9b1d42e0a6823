"""Requests that try to hold the server: a body over the limit sent without a Content-Length, and
clients that stop halfway through their headers or their body. Raw sockets on loopback, every wait
bounded, against a server with a small size limit and one-second timeouts."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from service.tools.client import parse_error
from tests.conftest import LiveServer, make_settings, needs_speech, new_key

pytestmark = [needs_speech, pytest.mark.model]

LIMIT = 64 * 1024
COMPAT_ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
NATIVE_IDENTIFY = "/v1/identify"
NATIVE_ENROLL = "/v1/speakers/alice/enrollments"
WAIT_S = 8.0  # far above the server's one-second timeouts, far below a hung test


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[LiveServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("limits"),
        audio={"max_request_bytes": LIMIT},
        http={"header_timeout_s": 1.0, "body_idle_timeout_s": 1.0, "body_timeout_s": 3.0},
    )
    live = LiveServer(settings, embedder)
    live.start()
    yield live
    live.stop()


def connect(live: LiveServer) -> socket.socket:
    host, port = live.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes, float]:
    """Everything the server sends until it closes: status, headers, body, seconds it took.
    Fails (socket timeout) if the server neither answers nor closes within `WAIT_S`."""
    start = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    took = time.monotonic() - start
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body, took


def request_head(path: str, *extra: str) -> bytes:
    # A key (any: the body's limits come before the key is looked up); a request with no key at all
    # is refused before its body is read.
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: localhost",
        "Content-Type: application/json",
        "X-API-Key: sk_not-looked-up-before-the-body",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def code_of(path: str, body: bytes) -> str:
    answer = parse_error(httpx.Response(400, content=body))
    assert answer.shape == ("fault" if path.startswith("/audio/") else "error") and answer.message
    return answer.code


@pytest.mark.parametrize("path", [COMPAT_ENROLL, NATIVE_IDENTIFY, NATIVE_ENROLL])
def test_chunked_body_over_the_limit_is_413(server: LiveServer, path: str) -> None:
    with connect(server) as sock:
        sock.sendall(request_head(path, "Transfer-Encoding: chunked"))
        for _ in range(LIMIT // 16384):
            sock.sendall(chunk(b"A" * 16384))
        sock.sendall(chunk(b"A"))  # one byte over; nothing more is sent, so nothing is left unread
        status, headers, body, _ = read_answer(sock)
    assert status == 413, body
    assert headers["content-type"].startswith("application/json")
    assert code_of(path, body) == "request.PayloadTooLarge"


@pytest.mark.parametrize("path", [COMPAT_ENROLL, NATIVE_IDENTIFY])
def test_a_body_that_stops_coming_is_408(server: LiveServer, path: str) -> None:
    with connect(server) as sock:
        sock.sendall(request_head(path, "Content-Length: 1000") + b'{"content": "')
        status, _, body, took = read_answer(sock)
    assert status == 408, body
    assert code_of(path, body) == "request.Timeout"
    assert took < 4.0


def test_a_body_sent_too_slowly_is_408(server: LiveServer) -> None:
    with connect(server) as sock:
        sock.sendall(request_head(NATIVE_IDENTIFY, "Content-Length: 1000"))
        start = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - start < WAIT_S:  # a byte every half second: never idle for 1 s
                sock.sendall(b" ")
                if select.select([sock], [], [], 0.5)[0]:
                    break  # the server answered
        status, _, body, _ = read_answer(sock)
        took = time.monotonic() - start
    assert status == 408, body
    assert 2.5 < took < 5.0  # the 3 s limit on the whole body


def test_headers_that_never_end_are_cut_off(server: LiveServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/identify HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        start = time.monotonic()
        for _ in range(2):  # a byte now and then, as a slow-headers attack does
            time.sleep(0.2)
            sock.sendall(b"a")
        status, _, _, _ = read_answer(sock)
        took = time.monotonic() - start
    assert status == 408
    assert took < 3.0


def test_a_connection_that_sends_nothing_is_closed(server: LiveServer) -> None:
    with connect(server) as sock:
        start = time.monotonic()
        assert sock.recv(65536).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - start < 3.0


def test_a_websocket_stream_outlives_the_header_deadline(server: LiveServer) -> None:
    """The header deadline is for HTTP requests; once a connection is upgraded, the stream's own
    idle timeout rules it. Here it is used past three header deadlines and still answers."""
    url = server.url.replace("http://", "ws://") + "/v1/identify/stream?sampleRate=16000"
    with ws_connect(url, additional_headers={"X-API-Key": new_key(server.settings, "streamer")}) as ws:
        for _ in range(3):
            time.sleep(1.2)  # past the server's one-second header deadline each time
            ws.send(b"\0")  # an odd byte count: this chunk's own error, the stream goes on
            assert json.loads(ws.recv(timeout=WAIT_S))["error"]["code"] == "audio.Undecodable"


def test_the_server_still_answers(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
