"""Engine and session factory. One session per request or task, one commit point."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app import jsontext
from app.db.bounded import bound_waits


# libpq waits this long for a connection (its minimum is 2 s): a server that
# is down or unreachable answers 503 promptly instead of hanging the caller.
CONNECT_TIMEOUT_S = 2
# A pooled connection is pinged before use; a live server answers at once.
PING_WITHIN_S = 2.0
# A statement with no server-side bound may run long (a batch's output file, a
# sweep): a worker waits for it rather than fail it, but not forever.
ANSWER_WITHIN_S = 300.0
# A pooled connection older than this is replaced at its next checkout (and one a thread keeps,
# workers/scheduler/store.py, goes back to the pool at that age).
POOL_RECYCLE_S = 1800
# A host that vanished (no RST) is noticed on an idle connection after
# 15 + 3 x 5 s of unanswered keepalives, and on one with data in flight after
# 30 s unacknowledged; a statement the client gave up on is cancelled by the
# server at its next check of the socket.
LIVENESS = {"keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5, "keepalives_count": 3,
            "tcp_user_timeout": 30_000}
SERVER_CHECKS = {"client_connection_check_interval": "10s"}


def make_engine(url: str, statement_timeout_ms: int | None = None, lock_timeout_ms: int | None = None,
                idle_in_transaction_ms: int | None = None, answer_within_s: float | None = None,
                **kwargs) -> Engine:
    """Every wait on the engine's connections is bounded (connect, ping, each round trip; bounded.py).

    `statement_timeout_ms`, `lock_timeout_ms` and `idle_in_transaction_ms` are the server's
    own bounds on each statement, lock wait and idle transaction of these connections; the
    client's wait for an answer (`answer_within_s`) is then set a little beyond them, so the
    server's clear error comes first and the client's bound only fires on a silent server.
    """
    if url.startswith("sqlite"):
        # The embedded mode shares one SQLite file between the API and the
        # worker process: WAL lets readers run beside the writer, and the busy
        # timeout turns lock contention into a short wait instead of an error.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               json_serializer=jsontext.dumps, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    server_settings = dict(SERVER_CHECKS)
    for name, value in (("statement_timeout", statement_timeout_ms), ("lock_timeout", lock_timeout_ms),
                        ("idle_in_transaction_session_timeout", idle_in_transaction_ms)):
        if value:
            server_settings[name] = int(value)
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S, **LIVENESS,
                    # Set at connect time, so they cost no round trip per transaction.
                    "options": " ".join(f"-c {name}={value}" for name, value in server_settings.items()),
                    **kwargs.pop("connect_args", {})}
    if answer_within_s is None:
        answer_within_s = statement_timeout_ms / 1000 + 5 if statement_timeout_ms else ANSWER_WITHIN_S
    # Pre-ping: a pooled connection that died with a restarted or failed-over
    # server is replaced before use, so the first request after the database
    # is back succeeds (without it, each stale connection failed one request
    # or task with a 503 or a retry). It costs one round trip per checkout.
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_recycle", POOL_RECYCLE_S)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # JSON columns (requests, results, batch lines) are written by orjson (app/jsontext.py).
    engine = create_engine(url, connect_args=connect_args, json_serializer=jsontext.dumps, **kwargs)
    if engine.dialect.driver == "psycopg":
        bound_waits(engine, answer_within_s, PING_WITHIN_S)
        # Many rows go in as one multi-row INSERT (pages of up to 1,000 rows), not as
        # psycopg's pipelined executemany: that streams a Bind per row while the server
        # streams a result per row back, and on a busy host the two directions fill each
        # other's socket buffers; loopback then prunes queued segments and TCP resends
        # them after its 200 ms minimum timeout (nstat: TcpExtPruneCalled, RetransSegs).
        # A 500-line batch chunk's output rows took 215-230 ms instead of ~15 in 4 of 18
        # writes; as one statement, none did.
        engine.dialect.use_insertmanyvalues_wo_returning = True
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: services return rows that callers read after the
    # commit (to build responses) without another round trip.
    return sessionmaker(bind=engine, expire_on_commit=False)
