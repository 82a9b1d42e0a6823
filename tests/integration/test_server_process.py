"""The launcher of `speakerid serve` child processes (devtools/server.py) when its port is taken.

It picks a free port and the server binds it after loading the model, seconds later; meanwhile the
other test process may start a server of its own on that very port. The crash test once took such a
stranger's /readyz for its restarted server's and sent it a cycle's requests (all answered 401).
Here a stranger answering 200 on /readyz holds the port first: the launcher must not take it for
its own server, and must start that server again on a port of its own.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from devtools import server as launcher
from devtools.server import ServerProcess, create_key, listening_pids, server_env, speakerid

pytestmark = [pytest.mark.slow, pytest.mark.model]


class AlwaysReady(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stranger() -> Iterator[int]:
    """Another process's server (here a thread of this one) that says it is ready; its port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysReady)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_listening_pids_names_the_owner() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert listening_pids(s.getsockname()[1]) == {os.getpid()}


def test_a_stranger_on_the_port_is_not_taken_for_the_server(
    stranger: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = [stranger]  # the first port handed out is the stranger's, then free ones
    real_free_port = launcher.free_port
    monkeypatch.setattr(launcher, "free_port", lambda: ports.pop(0) if ports else real_free_port())
    env = server_env(tmp_path)
    speakerid(env, "migrate")
    key = create_key(env, "own")
    server = ServerProcess(env, tmp_path)
    server.start()
    try:
        assert server.url.endswith(f":{stranger}")
        server.wait_ready()
        assert not server.url.endswith(f":{stranger}"), "took the stranger's /readyz for its own"
        assert server.starts == 2
        assert "address already in use" in (tmp_path / "server-0.log").read_text().lower()
        # It is this server that answers now: the key it was given works.
        listed = httpx.get(f"{server.url}/v1/speakers", headers={"X-API-Key": key}, timeout=30)
        assert listed.status_code == 200, listed.text
    finally:
        server.stop()
