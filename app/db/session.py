"""Engine and session factory. One session per request or task, one commit point."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        # The embedded mode shares one SQLite file between the API and the
        # worker process: WAL lets readers run beside the writer, and the busy
        # timeout turns lock contention into a short wait instead of an error.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # No pre-ping: it costs a round trip per session (two per job in a worker).
    # A connection that died is invalidated on first use instead; the request
    # answers 503 and the task retries, and recycling keeps idle ones fresh.
    kwargs.setdefault("pool_recycle", 1800)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: services return rows that callers read after the
    # commit (to build responses) without another round trip.
    return sessionmaker(bind=engine, expire_on_commit=False)
