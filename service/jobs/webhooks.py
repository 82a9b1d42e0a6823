"""Webhook bodies, their signature, and one delivery attempt.

Each delivery is a POST of the JSON result with the header
``X-Speakerid-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body, keyed by the
tenant's webhook secret>``. A receiver recomputes it over the raw body, compares in constant time,
and refuses timestamps far from its clock (a replayed old delivery).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from service.egress import Egress
from service.errors import ServiceError
from service.jobs.ports import Attempt

SIGNATURE_HEADER = "X-Speakerid-Signature"
REQUEST_ID_HEADER = "X-Speakerid-Request-Id"


def body_of(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """What a receiver does: True when `header` signs `body` with `secret` within `tolerance_s`."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).split(",v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def deliver(egress: Egress, url: str, request_id: str, body: bytes, secret: str, timeout_s: float) -> Attempt:
    """One attempt; never raises for the receiver's or the network's failures (they are recorded)."""
    started = time.monotonic()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(secret, int(time.time()), body),
        REQUEST_ID_HEADER: request_id,
        "User-Agent": "speakerid-webhooks",
    }
    try:
        status: int | None = egress.post(url, body, headers, timeout_s=timeout_s)
        error = None if status is not None and 200 <= status < 300 else f"HTTP {status}"
    except ServiceError as exc:
        status, error = None, exc.message
    except Exception as exc:  # any other failure is one failed attempt too, recorded, then retried
        status, error = None, f"{type(exc).__name__}: {exc}"
    return Attempt(status, error, time.monotonic() - started)
