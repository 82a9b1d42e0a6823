"""The egress rule against a real HTTP server on loopback: what is allowed, what is refused, redirects
checked hop by hop, size limits, and the webhook signature a receiver verifies."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from service.config import EgressSettings
from service.egress import Egress, EgressRule, check, is_public, url_egress, webhook_egress
from service.errors import EgressRefused, FetchFailed, PayloadTooLarge
from service.jobs import webhooks

AUDIO = bytes(range(256)) * 64  # 16 KiB


class Handler(BaseHTTPRequestHandler):
    hooks: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    hosts: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"", location: str | None = None) -> None:
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        Handler.hosts.append(self.headers.get("Host", ""))
        redirects = {
            "/to-private": "http://10.255.255.1/audio",
            "/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/to-loopback-v6": "http://[::1]/audio",
            "/to-audio": "/audio",
            "/loop": "/loop",
        }
        if self.path in redirects:
            self._answer(302, location=redirects[self.path])
        elif self.path == "/audio":
            self._answer(200, AUDIO)
        elif self.path == "/big":
            self._answer(200, b"\0" * 200_000)
        elif self.path == "/gzip":
            body = gzip.compress(b"\0" * 10_000_000)  # 10 kB on the wire, 10 MB unpacked
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._answer(404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Handler.hooks.append(({k: v for k, v in self.headers.items()}, body))
        self._answer(200 if self.path == "/hook" else 500)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetch(rule: str, url: str, max_bytes: int = 1_000_000) -> bytes:
    return Egress(EgressRule.parse(rule), max_redirects=3).fetch(url, max_bytes=max_bytes, timeout_s=10)


def test_fetching_is_off_until_hosts_are_listed(server: str) -> None:
    with pytest.raises(EgressRefused, match="SPK_EGRESS__ALLOWED_HOSTS"):
        url_egress(EgressSettings()).fetch(f"{server}/audio", max_bytes=10**6, timeout_s=10)


@pytest.mark.parametrize(
    "rule", ["127.0.0.1", "127.0.0.0/8", "10.0.0.0/8, 127.0.0.1/32", "localhost,127.0.0.1"]
)
def test_a_listed_address_is_fetched_with_its_name(server: str, rule: str) -> None:
    Handler.hosts.clear()
    assert fetch(rule, f"{server}/audio") == AUDIO
    assert Handler.hosts == [server.removeprefix("http://")]


@pytest.mark.parametrize("rule", ["*", "10.0.0.0/8", "example.com", "127.0.0.2"])
def test_loopback_is_refused_unless_listed(server: str, rule: str) -> None:
    Handler.hosts.clear()
    with pytest.raises(EgressRefused):
        fetch(rule, f"{server}/audio")
    assert Handler.hosts == []  # refused before connecting


def test_a_listed_host_name_is_resolved_and_keeps_its_name(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    Handler.hosts.clear()
    try:
        data = fetch("localhost", f"http://localhost:{port}/audio")
    except FetchFailed:
        pytest.skip("localhost resolves to ::1 first here and the server listens on 127.0.0.1")
    assert data == AUDIO
    assert Handler.hosts == [f"localhost:{port}"]


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata", "/to-loopback-v6"])
def test_a_redirect_to_an_address_not_allowed_is_refused(server: str, path: str) -> None:
    with pytest.raises(EgressRefused):
        fetch("127.0.0.1", f"{server}{path}")


def test_redirects_within_the_rule_are_followed_and_bounded(server: str) -> None:
    assert fetch("127.0.0.1", f"{server}/to-audio") == AUDIO
    with pytest.raises(FetchFailed, match="redirects"):
        fetch("127.0.0.1", f"{server}/loop")


def test_size_limit_and_errors(server: str) -> None:
    with pytest.raises(PayloadTooLarge):
        fetch("127.0.0.1", f"{server}/big", max_bytes=100_000)
    with pytest.raises(FetchFailed, match="404"):
        fetch("127.0.0.1", f"{server}/missing")
    for bad in ("file:///etc/passwd", "ftp://127.0.0.1/x", "http://", "not a url"):
        with pytest.raises(EgressRefused):
            fetch("*", bad)


def test_webhooks_go_to_public_addresses_by_default_and_to_loopback_only_when_listed(server: str) -> None:
    assert webhook_egress(EgressSettings()).rule.allows("example.com", ipaddress.ip_address("93.184.215.14"))
    with pytest.raises(EgressRefused):
        webhook_egress(EgressSettings()).post(f"{server}/hook", b"{}", {}, timeout_s=5)
    Handler.hooks.clear()
    listed = webhook_egress(EgressSettings(allowed_hosts="127.0.0.1"))
    assert listed.post(f"{server}/hook", b'{"a":1}', {"X-Test": "1"}, timeout_s=5) == 200
    assert listed.post(f"{server}/fails", b"{}", {}, timeout_s=5) == 500
    assert Handler.hooks[0][1] == b'{"a":1}' and Handler.hooks[0][0]["X-Test"] == "1"


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("169.254.169.254", False),  # cloud metadata (AWS, GCP, Azure)
        ("100.100.100.200", False),  # Alibaba's metadata
        ("fd00:ec2::254", False),  # AWS's IPv6 metadata
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # loopback written as IPv6
        ("::ffff:8.8.8.8", True),
        ("fe80::1", False),
        ("224.0.0.1", False),
        ("168.63.129.16", False),  # Azure's WireServer
        ("fec0::1", False),  # site-local
        ("2002:a9fe:a9fe::1", False),  # 6to4 around 169.254.169.254
        ("2002:0808:0808::1", True),  # 6to4 around 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo to 192.0.2.45
    ],
)
def test_what_counts_as_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_a_mapped_loopback_address_is_not_let_in_by_a_v4_range() -> None:
    rule = EgressRule.parse("127.0.0.0/8")
    assert rule.allows("x", ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not EgressRule.parse("*").allows("x", ipaddress.ip_address("::ffff:127.0.0.1"))


def test_the_signature_a_receiver_checks() -> None:
    body = webhooks.body_of({"request_id": "r1", "segments": []})
    now = int(time.time())
    header = webhooks.signature("whsec_a", now, body)
    assert webhooks.verify("whsec_a", header, body)
    assert not webhooks.verify("whsec_b", header, body)
    assert not webhooks.verify("whsec_a", header, body + b" ")
    assert not webhooks.verify("whsec_a", webhooks.signature("whsec_a", now - 3600, body), body)
    assert not webhooks.verify("whsec_a", "v1=deadbeef", body)


SLOW_ANSWER = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 200


@pytest.fixture
def drip() -> Iterator[tuple[str, list[int]]]:
    """A server that sends its answer a byte every 0.2 s, headers first, so that no single read
    waits long; it notes how many bytes of each answer went out before the client hung up."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                count = 0
                try:
                    for byte in SLOW_ANSWER:
                        conn.sendall(bytes([byte]))
                        count += 1
                        time.sleep(0.2)
                except OSError:
                    pass
                sent.append(count)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/audio", sent
    listener.close()


def test_one_deadline_holds_the_whole_fetch_and_post_against_a_slow_server(
    drip: tuple[str, list[int]],
) -> None:
    url, sent = drip
    listed = Egress(EgressRule.parse("127.0.0.1"))
    for call in (
        lambda: listed.fetch(url, max_bytes=10**6, timeout_s=1.0),
        lambda: listed.post(url, b"{}", {}, timeout_s=1.0),
    ):
        with pytest.raises(FetchFailed, match=r"in time|too long"):
            call()
    for _ in range(100):  # the server notices the hang-up at its next byte
        if len(sent) == 2:
            break
        time.sleep(0.1)
    # Cut off after about a second's worth of bytes; a timeout per read would take the whole answer.
    assert len(sent) == 2 and max(sent) < len(SLOW_ANSWER) // 2


def test_a_compressed_answer_is_refused_before_it_is_unpacked(server: str) -> None:
    with pytest.raises(FetchFailed, match="compressed"):
        fetch("127.0.0.1", f"{server}/gzip")


def test_international_names_are_checked_resolved_and_sent_in_their_idna_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, **kw: object) -> list[tuple[object, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for listed in ("faß.de", "xn--fa-hia.de", "FASS.de"):
        rule = EgressRule.parse(listed)
        if listed == "FASS.de":  # IDNA 2008 keeps the sharp s: fass.de is another domain
            with pytest.raises(EgressRefused):
                check("https://faß.de/hook", rule)
            continue
        target = check("https://faß.de/hook", rule)
        assert (target.host_header, target.sni) == ("xn--fa-hia.de", "xn--fa-hia.de")
    assert set(asked) == {"xn--fa-hia.de"}


def test_an_ipv6_literal_keeps_its_brackets_in_the_host_header() -> None:
    rule = EgressRule.parse("*")
    assert check("http://[2606:4700::1111]:8080/x", rule).host_header == "[2606:4700::1111]:8080"
    assert check("http://[2606:4700::1111]/x", rule).host_header == "[2606:4700::1111]"


def test_a_delivery_that_fails_unexpectedly_is_one_recorded_failed_attempt() -> None:
    class Broken(Egress):
        def post(self, url: str, body: bytes, headers: object, *, timeout_s: float) -> int:
            raise UnicodeEncodeError("ascii", "ß", 0, 1, "no")

    attempt = webhooks.deliver(Broken(EgressRule()), "https://x/hook", "r1", b"{}", "whsec_a", 1.0)
    assert not attempt.delivered and attempt.error is not None and "UnicodeEncodeError" in attempt.error
