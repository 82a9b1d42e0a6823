"""Keys are stored hashed and checked in constant time; errors render in the right shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.deps import KeyRateLimiter
from service.errors import RateLimited


def test_rate_limit_answers_429_with_retry_after() -> None:
    limiter = KeyRateLimiter(per_minute=3)
    for _ in range(3):
        limiter.hit("k1")
    with pytest.raises(RateLimited) as refused:
        limiter.hit("k1")
    assert refused.value.status == 429 and int(refused.value.headers["Retry-After"]) >= 1
    limiter.hit("k2")  # other keys are unaffected
    KeyRateLimiter(per_minute=0).hit("k1")


def test_uvicorn_access_lines_lose_their_query_string() -> None:
    import logging

    from service.logs import StripQueryStrings

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/speakers?apikey=sk_secret", "1.1", 200),
        None,
    )
    assert StripQueryStrings().filter(record)
    assert "sk_secret" not in record.getMessage() and "/v1/speakers" in record.getMessage()


def test_websocket_handshake_lines_lose_their_query_string_and_credential_headers() -> None:
    import logging

    from service.logs import RedactRequestLines

    def redacted(msg: str, *args: object) -> str:
        record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)
        assert RedactRequestLines().filter(record)
        return record.getMessage()

    path = "/v1/identify/stream?apikey=sk_secret&sampleRate=16000"
    accepted = redacted('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", path)
    assert accepted == '127.0.0.1:5000 - "WebSocket /v1/identify/stream" [accepted]'
    assert redacted("< GET %s HTTP/1.1", path) == "< GET /v1/identify/stream HTTP/1.1"
    for header in ("x-api-key", "Authorization", "cookie"):
        assert redacted("< %s: %s", header, "Bearer sk_secret") == f"< {header}: [redacted]"
    assert redacted("< %s: %s", "host", "127.0.0.1:8000") == "< host: 127.0.0.1:8000"
    assert redacted("Is the database up? Retrying") == "Is the database up? Retrying"
    # A record whose arguments do not fit its format is let through for logging to report, as before.
    unfit = logging.LogRecord("some.lib", logging.INFO, __file__, 1, "%s and %s", ("one",), None)
    assert RedactRequestLines().filter(unfit)


def test_outbound_request_lines_are_not_logged(tmp_path: Path) -> None:
    """httpx logs each request's URL at INFO: a `url` input's signed query or a webhook's token."""
    import logging

    from service.config import Settings
    from service.main import create_app

    create_app(Settings(data_dir=tmp_path))
    for name in ("httpx", "httpcore"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)


def test_a_body_that_is_no_json_object_is_named_so_without_the_models_class() -> None:
    from pydantic import ValidationError

    from service.api.errors import validation_summary
    from service.api.schemas import EnrollRequest

    bodies: tuple[object, ...] = ([], "text", 5)
    for body in bodies:
        with pytest.raises(ValidationError) as refused:
            EnrollRequest.model_validate(body)
        summary = validation_summary(refused.value.errors())
        assert "must be a JSON object" in summary and "EnrollRequest" not in summary
