"""Statements on the driver's own cursor (app/db/driver.py) fail as SQLAlchemy's own do."""
from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from app.batches.files import read_content
from app.db import make_engine, make_session_factory
from app.db.driver import driver_rows


@pytest.mark.parametrize("read", [lambda s: read_content(s, "file-none"),
                                  lambda s: driver_rows(s.connection(), "SELECT 1", {})])
def test_a_lost_connection_is_sqlalchemys_operational_error_on_an_invalidated_connection(pg_url, read):
    engine = make_engine(pg_url, pool_pre_ping=False)
    try:
        with make_session_factory(engine)() as session:
            pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(OperationalError) as raised:
                read(session)
            assert raised.value.connection_invalidated  # a retry (the store, a task) takes a fresh one
    finally:
        engine.dispose()
