"""Engine and session factory. One session per request or task, one commit point."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


# libpq waits this long for a connection (its minimum is 2 s): a server that
# is down or unreachable answers 503 promptly instead of hanging the caller.
CONNECT_TIMEOUT_S = 2


def make_engine(url: str, statement_timeout_ms: int | None = None, **kwargs) -> Engine:
    """`statement_timeout_ms` bounds every statement on the engine's connections, server side."""
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
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S, **kwargs.pop("connect_args", {})}
    if statement_timeout_ms:
        # Set at connect time, so it costs no round trip per transaction.
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    # Pre-ping: a pooled connection that died with a restarted or failed-over
    # server is replaced before use, so the first request after the database
    # is back succeeds (without it, each stale connection failed one request
    # or task with a 503 or a retry). It costs one round trip per checkout.
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_recycle", 1800)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, connect_args=connect_args, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: services return rows that callers read after the
    # commit (to build responses) without another round trip.
    return sessionmaker(bind=engine, expire_on_commit=False)
