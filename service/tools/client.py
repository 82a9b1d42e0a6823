"""A small HTTP client of the service: API key, retries with backoff, and the two error shapes."""

from __future__ import annotations

import argparse
import email.utils
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from service.tools.inputs import InputError

# Answers that say "try again later" rather than "this request is wrong".
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
# Answers that say the whole run is misconfigured (key, permissions): stop rather than record.
FATAL_STATUS = frozenset({401, 403})


class FatalHttpError(RuntimeError):
    """The service refuses the run itself (bad API key, wrong URL): retrying or going on is pointless."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins over the computed delay."""

    attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 0)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        return random.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header as seconds (it may be a number or an HTTP date), None if absent/bad."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class ErrorAnswer:
    """What an error answer says, and in which of the service's two shapes it said it."""

    shape: str  # "fault" (compatible routes), "error" (native routes), "" (neither: a proxy's page)
    code: str
    message: str


def parse_error(response: httpx.Response) -> ErrorAnswer:
    """The error of an answer, in the compatible fault shape
    ``{"fault": {"faultstring", "detail": {"errorcode"}}}`` or the native ``{"error": {"code", "message"}}``.
    Anything else is reported with the code ``http.<status>`` and no shape."""
    try:
        body = response.json()
    except ValueError:
        body = None
    fallback = f"http.{response.status_code}"
    if isinstance(body, dict):
        fault = body.get("fault")
        if isinstance(fault, dict):
            detail = fault.get("detail")
            code = detail.get("errorcode") if isinstance(detail, dict) else None
            return ErrorAnswer("fault", str(code or fallback), str(fault.get("faultstring", "")))
        error = body.get("error")
        if isinstance(error, dict):
            return ErrorAnswer("error", str(error.get("code") or fallback), str(error.get("message", "")))
    return ErrorAnswer("", fallback, response.text[:200])


def error_of(response: httpx.Response) -> tuple[str, str]:
    """(error code, message) of an error answer in either shape (`parse_error`)."""
    answer = parse_error(response)
    return answer.code, answer.message


@dataclass
class ServiceClient:
    """A thread-safe client of one service URL with one API key (sent as ``X-API-Key``).

    `request` retries 429/502/503/504 answers and connection errors with backoff; once the attempts
    are spent it returns the last transient answer, or raises the last `httpx.TransportError`.
    401/403 raise `FatalHttpError`.
    """

    url: str
    api_key: str
    timeout_s: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    retries: int = field(default=0, init=False)  # retries made so far, for the summary
    _http: httpx.Client = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._http = httpx.Client(
            base_url=self.url.rstrip("/"),
            headers={"X-API-Key": self.api_key},
            timeout=self.timeout_s,
            transport=self.transport,
        )

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TransportError:
                if last:
                    raise
                self._backoff(attempt, None)
                continue
            if response.status_code in FATAL_STATUS:
                code, message = error_of(response)
                raise FatalHttpError(f"{method} {path}: HTTP {response.status_code} {code}: {message}")
            if response.status_code not in TRANSIENT_STATUS or last:
                return response
            self._backoff(attempt, retry_after_seconds(response))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int, retry_after: float | None) -> None:
        with self._lock:
            self.retries += 1
        self.sleep(self.retry.delay(attempt, retry_after))


def reach(client: ServiceClient) -> int:
    """Check that the service answers this key before a run: the number of speakers its tenant
    holds. FatalHttpError (one line) when it cannot be reached, refuses the key or is not the
    service at that URL."""
    try:
        answer = client.request("GET", "/v1/speakers?limit=1")
    except httpx.TransportError as exc:
        raise FatalHttpError(f"cannot reach {client.url} ({type(exc).__name__}: {exc})") from exc
    if answer.status_code != 200:
        code, message = error_of(answer)
        status = f"HTTP {answer.status_code} {code}: {message}"
        raise FatalHttpError(f"GET {client.url}/v1/speakers: {status}; is --url the service?")
    total: int = answer.json()["total"]
    return total


# --- the command-line options every tool shares ---------------------------------------------------


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SPEAKERID_API_KEY"),
        help="API key (default: $SPEAKERID_API_KEY, which keeps it out of the process list)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument("--retries", type=int, default=5, help="retries on 429/503/connection errors (default 5)")


def connect(args: argparse.Namespace) -> ServiceClient:
    if not args.api_key:
        raise InputError("an API key is needed: --api-key or $SPEAKERID_API_KEY")
    return ServiceClient(
        url=args.url,
        api_key=args.api_key,
        timeout_s=args.timeout,
        retry=RetryPolicy(attempts=max(0, args.retries) + 1),
    )
