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


# The exit status of a command the operator stopped (Ctrl-C): 128 + SIGINT, as a shell reports it.
INTERRUPTED = 130

# Errors no retry can mend: the URL has no http(s) scheme, or the request itself cannot be sent.
NEVER_RETRIED: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
# The service is not there (refused, reset, gone mid-answer): what a restart looks like, so these are
# waited out for `RetryPolicy.reconnect_s` rather than counted with the other retries.
CONNECTION_FAILED: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


class FatalHttpError(RuntimeError):
    """The service refuses the run itself (bad API key, wrong URL): retrying or going on is pointless."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins over the computed delay.

    `attempts` bounds the tries of a request answered 429/502/503/504 or timed out. A connection
    failure (`CONNECTION_FAILED`) is retried apart from those, with backoff capped at
    `reconnect_max_delay_s`, until `reconnect_s` have passed since the request's first one, so
    that a routine restart of the service (seconds) does not fail the requests in flight.
    """

    attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    reconnect_s: float = 60.0
    reconnect_max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.reconnect_s < 0:
            raise ValueError("reconnect_s must not be negative")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 0)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        return random.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2**attempt))

    def reconnect_delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th connection failure in a row (from 1): half to
        all of a doubling delay capped at `reconnect_max_delay_s`, so clients spread out."""
        cap = min(self.reconnect_max_delay_s, self.base_delay_s * 2 ** (failures - 1))
        return random.uniform(cap / 2, cap)


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


@dataclass(frozen=True)
class Answer:
    """An answer, and whether an earlier try of the same request may have reached the service
    (its connection broke after the request was sent): the answer may then be to a repeat."""

    response: httpx.Response
    repeated: bool


@dataclass
class ServiceClient:
    """A thread-safe client of one service URL with one API key (sent as ``X-API-Key``).

    `request` retries 429/502/503/504 answers, timeouts and connection failures with backoff
    (`RetryPolicy`); once they are spent it returns the last transient answer, or raises the last
    `httpx.TransportError`. A URL without http(s) raises at once (`NEVER_RETRIED`); 401/403 raise
    `FatalHttpError`.
    """

    url: str
    api_key: str
    timeout_s: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    stop: threading.Event | None = None  # once set, waits end and nothing more is retried
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

    def request(
        self, method: str, path: str, *, json: Any = None, reconnect_s: float | None = None
    ) -> httpx.Response:
        return self.send(method, path, json=json, reconnect_s=reconnect_s).response

    def send(self, method: str, path: str, *, json: Any = None, reconnect_s: float | None = None) -> Answer:
        """`request`, saying also whether the answer may be to a repeat. `reconnect_s` overrides
        the policy's time to wait out connection failures (0: raise the first one)."""
        wait_s = self.retry.reconnect_s if reconnect_s is None else reconnect_s
        attempt, failures, down_since, repeated = 0, 0, 0.0, False
        while True:
            last = attempt == self.retry.attempts - 1
            try:
                response = self._http.request(method, path, json=json)
            except NEVER_RETRIED:
                raise
            except CONNECTION_FAILED as exc:
                failures += 1
                if failures == 1:
                    down_since = self.clock()
                delay = self.retry.reconnect_delay(failures)
                if self.clock() - down_since + delay > wait_s:
                    raise
                # A refused connection never carried the request; a broken one may have.
                repeated = repeated or not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not self._wait(delay):
                    raise
                continue
            except httpx.TransportError:
                if last or not self._wait(self.retry.delay(attempt, None)):
                    raise
                repeated = True
                attempt += 1
                continue
            failures = 0
            if response.status_code in FATAL_STATUS:
                code, message = error_of(response)
                raise FatalHttpError(f"{method} {path}: HTTP {response.status_code} {code}: {message}")
            if response.status_code not in TRANSIENT_STATUS or last:
                return Answer(response, repeated)
            if not self._wait(self.retry.delay(attempt, retry_after_seconds(response))):
                return Answer(response, repeated)
            attempt += 1

    def _wait(self, seconds: float) -> bool:
        """Wait before a retry; False (retry no more) if `stop` is or gets set meanwhile."""
        if self.stop is not None and self.stop.wait(seconds):
            return False
        with self._lock:
            self.retries += 1
        if self.stop is None:
            self.sleep(seconds)
        return True


def reach(client: ServiceClient) -> int:
    """Check that the service answers this key before a run: the number of speakers its tenant
    holds. FatalHttpError (one line) when it cannot be reached, refuses the key or is not the
    service at that URL. A connection failure is not waited out here: a wrong --url stops the run
    at once, before it sends anything."""
    try:
        answer = client.request("GET", "/v1/speakers?limit=1", reconnect_s=0.0)
    except (httpx.TransportError, httpx.InvalidURL) as exc:
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
    p.add_argument(
        "--retries", type=int, default=5, help="retries on 429/503 answers and timeouts (default 5)"
    )
    p.add_argument(
        "--reconnect-wait",
        type=float,
        default=RetryPolicy.reconnect_s,
        metavar="S",
        help="seconds a request keeps retrying while the service refuses or drops connections, as "
        "while it restarts (default %(default)g)",
    )


def connect(args: argparse.Namespace) -> ServiceClient:
    if not args.api_key:
        raise InputError("an API key is needed: --api-key or $SPEAKERID_API_KEY")
    return ServiceClient(
        url=args.url,
        api_key=args.api_key,
        timeout_s=args.timeout,
        retry=RetryPolicy(attempts=max(0, args.retries) + 1, reconnect_s=max(0.0, args.reconnect_wait)),
    )
