"""Alembic environment: the URL comes from the service settings (SPK_DATABASE_URL) unless the
caller (``speakerid migrate``) already set one."""

from __future__ import annotations

from alembic import context

from service.config import Settings
from service.storage.database import MIGRATION_LOCK, make_engine
from service.storage.tables import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url()


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":  # two at once queue up (see MIGRATION_LOCK)
                # The service's lock_timeout is for requests; a migration waits for the one before.
                connection.exec_driver_sql("SET LOCAL lock_timeout = '10min'")
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
