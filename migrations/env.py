"""Alembic environment: the URL comes from poolq's settings unless the caller set one."""

from __future__ import annotations

from alembic import context

from app.config import Settings
from app.db.session import make_engine
from app.records import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = make_engine(url)
    with connectable.connect() as connection:
        # Batch mode lets ALTERs work on SQLite (the embedded default) too.
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                          compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
