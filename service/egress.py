"""Outbound connections: fetching a request's `url`, delivering webhooks. One rule for both.

`SPK_EGRESS__ALLOWED_HOSTS` lists host names, CIDR ranges, or `*` (any public address). A host name
is resolved once; the connection goes to the checked address (the Host header and TLS SNI keep the
name, so virtual hosts and certificates still work), so a DNS answer that changes between the check
and the connect cannot reach an address the rule refuses. Every redirect is checked again. Loopback,
link-local (cloud metadata lives there), private and other non-global addresses are reached only
when listed by name or range.

Each call holds one deadline from start to end, name resolution, every redirect and a server that
sends its headers or body a byte at a time included (the HTTP exchange runs under `asyncio.timeout`,
which a per-read timeout is not). Bodies are asked for and read uncompressed, so the size limit
counts what is held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin

import httpx

from service.config import EgressSettings
from service.errors import EgressRefused, FetchFailed, PayloadTooLarge, shown

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata and host services at global addresses (AWS IPv6, Alibaba, Azure's WireServer);
# refused unless listed.
METADATA = (
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("168.63.129.16/32"),
)
REDIRECTS = (301, 302, 303, 307, 308)
# A check made when a job is submitted (no fetch yet) waits this long for name resolution.
RESOLVE_TIMEOUT_S = 10.0
# getaddrinfo cannot be interrupted: it runs here, and a call waits for it only until its deadline.
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="egress-resolve")


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4 address written as IPv6 (::ffff:127.0.0.1) is that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    a = _plain(address)
    if any(a in net for net in METADATA):
        return False
    if isinstance(a, ipaddress.IPv6Address):
        # 6to4 and Teredo carry an IPv4 address inside: it must be public too.
        if a.is_site_local or (a.sixtofour is not None and not is_public(a.sixtofour)):
            return False
        if a.teredo is not None and not all(is_public(v4) for v4 in a.teredo):
            return False
    return a.is_global and not (a.is_multicast or a.is_reserved or a.is_loopback or a.is_link_local)


def _ascii_host(host: str) -> str:
    """A host name as it goes on the wire (IDNA 2008, as httpx encodes it), lower case, no final dot."""
    with contextlib.suppress(httpx.InvalidURL, UnicodeError):
        host = httpx.URL(f"http://{host}/").raw_host.decode("ascii")
    return host.lower().rstrip(".")


@dataclass(frozen=True)
class EgressRule:
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    any_public: bool = False

    @classmethod
    def parse(cls, listed: str, *, public: bool = False) -> EgressRule:
        """`listed` as in SPK_EGRESS__ALLOWED_HOSTS; `public` allows any public address anyway."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        any_public = public
        for entry in (e.strip() for e in listed.split(",")):
            if not entry:
                continue
            if entry == "*":
                any_public = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(_ascii_host(entry))
        return cls(frozenset(hosts), tuple(networks), any_public)

    @property
    def enabled(self) -> bool:
        return bool(self.hosts or self.networks or self.any_public)

    def allows(self, host: str, address: IPAddress) -> bool:
        if _ascii_host(host) in self.hosts:
            return True
        a = _plain(address)
        if any(a.version == net.version and a in net for net in self.networks):
            return True
        return self.any_public and is_public(a)


def resolve(host: str, port: int, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[IPAddress]:
    """The addresses of `host` (an ASCII name or an address literal), within `timeout_s`."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    pending = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = pending.result(timeout=max(timeout_s, 0.001))
    except FutureTimeout as exc:
        raise FetchFailed(f"Resolving {shown(host)!r} took too long") from exc
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchFailed(f"The host {shown(host)!r} could not be resolved") from exc
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True)
class Target:
    """Where one request goes: the URL to connect to (host replaced by the checked address) and the
    name the server must see."""

    url: httpx.URL
    host_header: str
    sni: str


def check(url: str, rule: EgressRule, timeout_s: float = RESOLVE_TIMEOUT_S) -> Target:
    """Parse, resolve once and check `url`; raise EgressRefused (or FetchFailed) if it may not be reached.

    The name is taken as it goes on the wire (an international name in its IDNA form), for the
    resolution, the rule, the Host header and TLS SNI alike."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise EgressRefused(f"Not a valid URL: {shown(url)!r}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise EgressRefused("Only http and https URLs with a host are allowed")
    if not rule.enabled:
        raise EgressRefused(
            "Fetching audio from a url is off: the operator has not set SPK_EGRESS__ALLOWED_HOSTS"
        )
    try:
        host = parsed.raw_host.decode("ascii")
        host_header = parsed.netloc.decode("ascii")
    except UnicodeError as exc:
        raise EgressRefused(f"Not a valid host name: {shown(parsed.host)!r}") from exc
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    allowed = [a for a in resolve(host, port, timeout_s) if rule.allows(host, a)]
    if not allowed:
        raise EgressRefused(
            f"Connections to {shown(parsed.host)!r} are not allowed (SPK_EGRESS__ALLOWED_HOSTS)"
        )
    return Target(parsed.copy_with(host=str(allowed[0])), host_header, host)


def _client() -> httpx.AsyncClient:
    # One client per hop: a pooled connection whose certificate was checked for one name must not
    # carry a request for another. No proxies from the environment: the check is about where the
    # connection really goes.
    return httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None)


def _request(
    client: httpx.AsyncClient,
    method: str,
    target: Target,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Request:
    return client.build_request(
        method,
        target.url,
        content=content,
        headers={**(headers or {}), "Host": target.host_header, "Accept-Encoding": "identity"},
        extensions={"sni_hostname": target.sni},
    )


def _bounded(work: Awaitable[T], timeout_s: float, message: str) -> T:
    """Run `work` on an event loop of its own (callers are worker threads), all of it within
    `timeout_s`: a server that answers a byte at a time is cut off at the deadline."""

    async def run() -> T:
        try:
            async with asyncio.timeout(max(timeout_s, 0.001)):
                return await work
        except TimeoutError as exc:
            raise FetchFailed(message) from exc

    return asyncio.run(run())


class Egress:
    """Outbound HTTP under one rule."""

    def __init__(self, rule: EgressRule, *, max_redirects: int = 5) -> None:
        self.rule = rule
        self.max_redirects = max_redirects

    def fetch(self, url: str, *, max_bytes: int, timeout_s: float) -> bytes:
        """GET `url` (redirects followed, each checked): the body, at most `max_bytes`, all within
        `timeout_s`."""
        return _bounded(self._fetch(url, max_bytes, timeout_s), timeout_s, "Fetching url took too long")

    async def _fetch(self, url: str, max_bytes: int, timeout_s: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for _ in range(self.max_redirects + 1):
            target = check(url, self.rule, deadline - loop.time())
            try:
                async with _client() as client:
                    response = await client.send(_request(client, "GET", target), stream=True)
                    try:
                        if response.status_code in REDIRECTS and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        if response.status_code != 200:
                            raise FetchFailed(f"Fetching url answered HTTP {response.status_code}")
                        return await _read(response, max_bytes)
                    finally:
                        await response.aclose()
            except httpx.HTTPError as exc:
                raise FetchFailed(f"Fetching url failed: {type(exc).__name__}") from exc
        raise FetchFailed(f"Fetching url took more than {self.max_redirects} redirects")

    def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> int:
        """POST `body` to `url` (no redirects followed: a webhook answers where it was told to);
        the answer's status code, all within `timeout_s`. Raises EgressRefused, or FetchFailed when
        no answer came."""
        return _bounded(self._post(url, body, headers, timeout_s), timeout_s, "No answer in time")

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        target = check(url, self.rule, timeout_s)
        try:
            async with _client() as client:
                response = await client.send(_request(client, "POST", target, body, headers), stream=True)
                await response.aclose()
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{type(exc).__name__}") from exc
        return response.status_code


async def _read(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"The audio at url is larger than {max_bytes} bytes")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchFailed(f"The audio at url came compressed ({shown(encoding)!r}); it must come as is")
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_raw():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"The audio at url is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def url_egress(settings: EgressSettings) -> Egress:
    """For fetching a request's `url`: only what the operator listed."""
    return Egress(EgressRule.parse(settings.allowed_hosts), max_redirects=settings.max_redirects)


def webhook_egress(settings: EgressSettings) -> Egress:
    """For webhooks: any public address, plus what the operator listed (on-prem receivers)."""
    return Egress(EgressRule.parse(settings.allowed_hosts, public=True), max_redirects=0)
