"""The databases tests run against: a SQLite file always, PostgreSQL where a server is available.

`SPK_TEST_POSTGRES_URL` names a PostgreSQL server's maintenance database (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``); `scripts/test.sh` starts one on loopback
and sets it. Each call of `fresh_url` makes a new, empty, migrated database, so tests never share state.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.storage.database import migrate

POSTGRES_ENV = "SPK_TEST_POSTGRES_URL"
KINDS = ["sqlite", "postgres"]


def postgres_server() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def skip_without_postgres(kind: str) -> None:
    if kind == "postgres" and postgres_server() is None:
        pytest.skip(f"no PostgreSQL server: set {POSTGRES_ENV} (scripts/test.sh starts one)")


def fresh_url(kind: str, folder: Path, migrated: bool = True) -> str:
    """A new empty database of `kind` ("sqlite" or "postgres"), migrated unless told otherwise."""
    skip_without_postgres(kind)
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'db-{uuid.uuid4().hex[:8]}.sqlite'}"
    else:
        server = make_url(postgres_server() or "")
        name = f"spk_test_{uuid.uuid4().hex[:12]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = server.set(database=name).render_as_string(hide_password=False)
    if migrated:
        migrate(url)
    return url
