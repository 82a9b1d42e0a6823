"""Outbound connections: fetching a request's `url`, delivering webhooks. One rule for both.

`SPK_EGRESS__ALLOWED_HOSTS` lists host names, CIDR ranges, or `*` (any public address). A host name
is resolved once; the connection goes to the checked address (the Host header and TLS SNI keep the
name, so virtual hosts and certificates still work), so a DNS answer that changes between the check
and the connect cannot reach an address the rule refuses. Every redirect is checked again. Loopback,
link-local (cloud metadata lives there), private and other non-global addresses are reached only
when listed by name or range.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from service.config import EgressSettings
from service.errors import EgressRefused, FetchFailed, PayloadTooLarge, shown

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services outside link-local space (AWS IPv6, Alibaba); refused unless listed.
METADATA = (ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("100.100.100.200/32"))
REDIRECTS = (301, 302, 303, 307, 308)


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4 address written as IPv6 (::ffff:127.0.0.1) is that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    a = _plain(address)
    if any(a in net for net in METADATA):
        return False
    return a.is_global and not (a.is_multicast or a.is_reserved or a.is_loopback or a.is_link_local)


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
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks), any_public)

    @property
    def enabled(self) -> bool:
        return bool(self.hosts or self.networks or self.any_public)

    def allows(self, host: str, address: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        a = _plain(address)
        if any(a.version == net.version and a in net for net in self.networks):
            return True
        return self.any_public and is_public(a)


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
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


def check(url: str, rule: EgressRule) -> Target:
    """Parse, resolve once and check `url`; raise EgressRefused (or FetchFailed) if it may not be reached."""
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
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    allowed = [a for a in resolve(parsed.host, port) if rule.allows(parsed.host, a)]
    if not allowed:
        raise EgressRefused(
            f"Connections to {shown(parsed.host)!r} are not allowed (SPK_EGRESS__ALLOWED_HOSTS)"
        )
    address = allowed[0]
    netloc = f"[{address}]" if address.version == 6 else str(address)
    host_header = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
    return Target(parsed.copy_with(host=netloc.strip("[]")), host_header, parsed.host)


def _send(
    client: httpx.Client,
    method: str,
    target: Target,
    timeout_s: float,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    request = client.build_request(
        method,
        target.url,
        content=content,
        headers={**(headers or {}), "Host": target.host_header},
        timeout=httpx.Timeout(max(timeout_s, 0.001)),
        extensions={"sni_hostname": target.sni},
    )
    return client.send(request, stream=True)


class Egress:
    """Outbound HTTP under one rule. Proxies from the environment are ignored: the check is about
    where the connection really goes."""

    def __init__(self, rule: EgressRule, *, max_redirects: int = 5) -> None:
        self.rule = rule
        self.max_redirects = max_redirects

    def fetch(self, url: str, *, max_bytes: int, timeout_s: float) -> bytes:
        """GET `url` (redirects followed, each checked): the body, at most `max_bytes`, all within
        `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            for _ in range(self.max_redirects + 1):
                target = check(url, self.rule)
                try:
                    response = _send(client, "GET", target, deadline - time.monotonic())
                    try:
                        if response.status_code in REDIRECTS and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        if response.status_code != 200:
                            raise FetchFailed(f"Fetching url answered HTTP {response.status_code}")
                        return _read(response, max_bytes, deadline)
                    finally:
                        response.close()
                except httpx.HTTPError as exc:
                    raise FetchFailed(f"Fetching url failed: {type(exc).__name__}") from exc
        raise FetchFailed(f"Fetching url took more than {self.max_redirects} redirects")

    def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> int:
        """POST `body` to `url` (no redirects followed: a webhook answers where it was told to);
        the answer's status code. Raises EgressRefused, or FetchFailed when no answer came."""
        target = check(url, self.rule)
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            try:
                response = _send(client, "POST", target, timeout_s, body, headers)
                response.close()
            except httpx.HTTPError as exc:
                raise FetchFailed(f"{type(exc).__name__}") from exc
        return response.status_code


def _read(response: httpx.Response, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"The audio at url is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"The audio at url is larger than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchFailed("Fetching url took too long")
        chunks.append(chunk)
    return b"".join(chunks)


def url_egress(settings: EgressSettings) -> Egress:
    """For fetching a request's `url`: only what the operator listed."""
    return Egress(EgressRule.parse(settings.allowed_hosts), max_redirects=settings.max_redirects)


def webhook_egress(settings: EgressSettings) -> Egress:
    """For webhooks: any public address, plus what the operator listed (on-prem receivers)."""
    return Egress(EgressRule.parse(settings.allowed_hosts, public=True), max_redirects=0)
