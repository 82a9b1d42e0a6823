"""Engine creation and migration checks for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service import resources
from service.config import DatabaseSettings
from service.errors import DatabaseUnavailable, StartupError

log = logging.getLogger(__name__)

# PostgreSQL's SQLSTATEs that say the server could not serve now, not that the statement is wrong:
# connection exceptions (class 08), shutdowns and a database that cannot take connections now
# (57P01-57P03), a statement cancelled by a timeout (57014), a lock not obtained in time (55P03),
# a session ended idle in its transaction (25P03), a serialization failure or deadlock (40001,
# 40P01: the same request succeeds when sent again), too many connections (53300).
PG_UNAVAILABLE = ("08", "57P01", "57P02", "57P03", "57014", "55P03", "25P03", "40001", "40P01", "53300")
# SQLite's: the write lock not had within the busy timeout, a file that cannot be opened or read.
SQLITE_UNAVAILABLE = ("database is locked", "unable to open", "disk i/o error", "readonly database")
# How long a SQLite connection waits for another's write lock before "database is locked".
SQLITE_BUSY_S = 30.0


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or answered in time (down, the link
    cut, the pool exhausted, a lock or an idle transaction timed out), not that a request or the
    schema was wrong ("no such table" is a bug to see, not an outage to wait out)."""
    if isinstance(exc, PoolTimeout | InterfaceError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):  # PostgreSQL (psycopg)
        return sqlstate.startswith(PG_UNAVAILABLE)
    if isinstance(exc, OperationalError):
        # psycopg's failures to connect carry no SQLSTATE; SQLite says what went wrong in words.
        if not type(exc.orig).__module__.startswith("sqlite3"):
            return True
        return str(exc.orig).lower().startswith(SQLITE_UNAVAILABLE)
    return False


def outage(exc: BaseException, **where: str) -> DatabaseUnavailable | None:
    """`exc` as the 503 it stands for, logged in one line (with `where`: the path, the rpc), or
    None when it says no outage (a bug, to be raised and seen with its traceback)."""
    if not unavailable(exc):
        return None
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    log.warning("database unavailable", extra={**where, "error": f"{type(exc).__name__}: {first}"})
    return DatabaseUnavailable()


def make_engine(url: str, settings: DatabaseSettings | None = None) -> Engine:
    s = settings or DatabaseSettings()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_S})
        _sqlite_serialised_writes(engine)
        return engine
    # A server that does not answer fails a connection in 10 s rather than the OS's minutes (a
    # readiness probe, a request), and a link that goes silent is found dead in about 15 s (TCP
    # keepalives, and a limit on unacknowledged data) instead of TCP's 15 minutes, unless the URL
    # sets its own (these are the client library's own options, which poolers never see).
    defaults: dict[str, Any] = {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
    }
    connect_args = {k: v for k, v in defaults.items() if k not in parsed.query}
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=s.pool_size,
        max_overflow=s.max_overflow,
        pool_timeout=s.pool_timeout_s,
        connect_args=connect_args,
    )
    _postgres_session_limits(engine, s)
    return engine


def _postgres_session_limits(engine: Engine, s: DatabaseSettings) -> None:
    """A lock waited for past `lock_timeout_s` stops the statement; a session left idle inside a
    transaction past `idle_in_transaction_timeout_s` (a stalled or cut-off replica) is ended by the
    server, so its locks (a tenant's enrollment lock) cannot stop the other replicas, and its
    transaction cannot commit much later than the change numbers it drew. Set with SET on each new
    connection, not as a startup `options` parameter: poolers (PgBouncer) refuse that parameter,
    and it would replace an operator's PGOPTIONS. 0 leaves the server's own setting."""
    limits = {
        "lock_timeout": s.lock_timeout_s,
        "idle_in_transaction_session_timeout": s.idle_in_transaction_timeout_s,
    }
    statements = [f"SET {name} = {round(seconds * 1000)}" for name, seconds in limits.items() if seconds > 0]
    if not statements:
        return

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        dbapi_connection.commit()


def _sqlite_serialised_writes(engine: Engine) -> None:
    """WAL, enforced foreign keys, and BEGIN IMMEDIATE so that concurrent writers queue up.

    pysqlite's own transaction handling defers BEGIN until the first write, which lets two
    enrollments of one speaker read the same state; taking the write lock at BEGIN makes every
    transaction serialisable.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _write_ahead_log(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _write_ahead_log(cursor: Any, wait_s: float = SQLITE_BUSY_S) -> None:
    """PRAGMA journal_mode=WAL. Switching a new database file to it needs a lock that SQLite does
    not wait for (its busy timeout is not consulted): while another connection writes to the file,
    the switch fails at once with "database is locked", which failed one of two `speakerid migrate`
    started together on a new file. It is tried again until `wait_s` have passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.migrations()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# PostgreSQL advisory lock a migration's transaction holds (migrations/env.py): two `speakerid
# migrate` at once (two containers starting on a new database) queue up, and the second finds the
# schema up to date.
MIGRATION_LOCK = 0x5350_4B4D_4947  # "SPKMIG"


def migrate(url: str) -> None:
    """Bring the database at `url` to the latest migration (a SQLite file and its folder are made)."""
    with _start_up_errors(url):
        if make_url(url).get_backend_name() == "sqlite":
            make_engine(url).dispose()  # creates the data folder
        command.upgrade(alembic_config(url), "head")


def open_migrated(url: str) -> Engine:
    """An engine on the existing, migrated database at `url`; StartupError, with what to do, for a
    URL that is none, a driver that is missing, a database that is not there, not reachable or not
    migrated. Nothing is created (a mistyped SQLite path stays untouched)."""
    with _start_up_errors(url):
        parsed = make_url(url)
        file = parsed.database if parsed.get_backend_name() == "sqlite" else None
        if file not in (None, "", ":memory:") and not Path(str(file)).is_file():
            raise StartupError(f"No database at {file}: run `speakerid migrate` first.")
        engine = make_engine(url)
        check_migrated(engine, url)
        return engine


@contextmanager
def _start_up_errors(url: str) -> Iterator[None]:
    """The database's own failures as one line for the operator, not a traceback."""
    try:
        yield
    except StartupError:
        raise
    except ArgumentError as exc:
        raise StartupError(f"SPK_DATABASE_URL is not a database URL: {exc}") from exc
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise StartupError(
            f"No driver for the database URL's kind (sqlite and postgresql are supported): {exc}"
        ) from exc
    except SQLAlchemyError as exc:
        where = _shown_url(url)
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartupError(f"The database at {where} could not be used: {first}") from exc


def _shown_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a URL)"


def check_migrated(engine: Engine, url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise StartupError(
            f"The database at {engine.url.render_as_string(hide_password=True)} is at migration "
            f"{current or 'none'}, the service needs {head}: run `speakerid migrate` first."
        )
