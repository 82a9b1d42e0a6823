"""Keys are stored hashed and checked in constant time; errors render in the right shape."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from service.api.deps import KeyRateLimiter
from service.errors import RateLimited, StartupError
from service.storage.database import check_migrated, make_engine, migrate
from service.storage.repository import SqlStore, hash_key
from service.storage.tables import ApiKey


def test_keys_are_hashed_and_revocation_is_immediate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    migrate(url)
    store = SqlStore(make_engine(url))
    key_id, secret = store.create_key("acme")
    with store.engine.connect() as conn:
        stored = conn.execute(select(ApiKey.key_hash)).scalar_one()
    assert stored == hash_key(secret) and secret not in stored
    found = store.authenticate(secret)
    assert found is not None and found.tenant == "acme" and found.key_id == key_id
    assert store.authenticate(secret + "x") is None
    assert store.revoke_key(key_id) and store.authenticate(secret) is None
    assert not store.revoke_key("key_unknown")


def test_unmigrated_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(StartupError, match="speakerid migrate"):
        check_migrated(make_engine(url), url)


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
