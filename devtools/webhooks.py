"""A webhook receiver on loopback for tests and scripts: records every delivery, checks nothing
itself (the caller verifies signatures), can answer errors first, and serves files for `url` input."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    """`url` + "/hook" takes deliveries; `fail_first[request_id] = n` answers the first n of that
    request's deliveries with 500; `files[name]` is served at `url` + "/files/" + name."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.answers: list[int] = []
        self.fail_first: dict[str, int] = {}
        self.files: dict[str, bytes] = {}
        self._lock = threading.Condition()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                name = self.path.removeprefix("/files/")
                found = receiver.files.get(name) if self.path.startswith("/files/") else None
                self._answer(200, found) if found is not None else self._answer(404)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                delivery = Delivery(self.path, dict(self.headers.items()), body)
                rid = self.headers.get("X-Speakerid-Request-Id", "")
                with receiver._lock:
                    failing = receiver.fail_first.get(rid, 0)
                    receiver.fail_first[rid] = failing - 1
                    status = 500 if failing > 0 else 200
                    receiver.answers.append(status)
                    if status == 200:
                        receiver.deliveries.append(delivery)
                    receiver._lock.notify_all()
                self._answer(status)

        return Handler

    @property
    def hook(self) -> str:
        return f"{self.url}/hook"

    def received(self, request_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.json.get("request_id") == request_id]

    def wait_for(self, request_id: str, timeout_s: float = 120.0) -> Delivery:
        """The first accepted delivery of `request_id`, waiting for it up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                found = [d for d in self.deliveries if d.json.get("request_id") == request_id]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no delivery for {request_id} within {timeout_s:g} s")
                self._lock.wait(left)


@contextmanager
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r._thread.start()
    try:
        yield r
    finally:
        r._httpd.shutdown()
        r._httpd.server_close()
