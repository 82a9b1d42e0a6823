"""The databases tests run against: a SQLite file always, PostgreSQL where a server is available.

`SPEAKERID_TEST_POSTGRES_URL` names a PostgreSQL server's maintenance database (for example
``postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres``); `scripts/test.sh` starts one on
loopback with `scripts/postgres.sh` and sets it. Each call of `fresh_url` makes a new, empty,
migrated database, so tests never share state; the PostgreSQL ones are dropped when the session ends.
Under CI (``CI=true``) a missing server fails the PostgreSQL tests instead of skipping them.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url

from service.storage.database import migrate
from service.storage.repository import hash_key
from service.storage.tables import ApiKey, Speaker

POSTGRES_ENV = "SPEAKERID_TEST_POSTGRES_URL"
KINDS = ["sqlite", "postgres"]

_created: list[str] = []  # PostgreSQL databases made by this session
_created_lock = threading.Lock()


def postgres_server() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_without_postgres(kind: str) -> None:
    if kind == "postgres" and postgres_server() is None:
        reason = f"no PostgreSQL server: set {POSTGRES_ENV} (scripts/test.sh starts one)"
        if in_ci():
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(reason)


def kind_params() -> list[Any]:
    """`KINDS` as pytest params, the PostgreSQL one marked `postgres` (select with -m postgres)."""
    return [pytest.param(k, marks=pytest.mark.postgres) if k == "postgres" else k for k in KINDS]


def _admin() -> Engine:
    return create_engine(make_url(postgres_server() or ""), isolation_level="AUTOCOMMIT")


def fresh_url(kind: str, folder: Path, migrated: bool = True) -> str:
    """A new empty database of `kind` ("sqlite" or "postgres"), migrated unless told otherwise."""
    skip_without_postgres(kind)
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'db-{uuid.uuid4().hex[:8]}.sqlite'}"
    else:
        name = f"spk_test_{uuid.uuid4().hex[:12]}"
        admin = _admin()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        with _created_lock:
            _created.append(name)
        url = make_url(postgres_server() or "").set(database=name).render_as_string(hide_password=False)
    if migrated:
        migrate(url)
    return url


def drop_created() -> None:
    """Drop the PostgreSQL databases this session made (connections still open are cut)."""
    with _created_lock:
        names, _created[:] = list(_created), []
    if not names or postgres_server() is None:
        return
    admin = _admin()
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def tenant_of_key(engine: Engine, key: str) -> int:
    """The tenant row id an API key belongs to."""
    with engine.connect() as conn:
        found = conn.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key)))
    assert found is not None, "unknown key"
    return int(found)


def speaker_rows(engine: Engine, key: str, speaker_id: str) -> list[int]:
    """Row ids of the key's tenant's speakers called `speaker_id` (zero or one)."""
    tenant = tenant_of_key(engine, key)
    with engine.connect() as conn:
        query = select(Speaker.id).where(Speaker.tenant_id == tenant, Speaker.external_id == speaker_id)
        return [int(i) for i in conn.scalars(query)]


def indexable_speakers(engine: Engine) -> set[int]:
    """Row ids of the speakers the index must hold: every speaker with a centroid."""
    with engine.connect() as conn:
        return set(conn.scalars(select(Speaker.id).where(Speaker.centroid.is_not(None))))
