"""A bound on every wait for Postgres, also when the server is alive but silent.

TCP keepalives and libpq's connect_timeout notice a server that is gone or
unreachable. A server that is there but does not answer (SIGSTOPped, hung on
storage, a frozen VM) still acknowledges TCP, so keepalives see nothing, and a
statement sent on an open connection would wait forever, the pool's
pre-ping included. psycopg drives every round trip through
`Connection.wait`; this subclass gives each one a deadline, after which the
connection is closed (its protocol state is unknown) and the caller gets an
OperationalError: SQLAlchemy discards the connection, the API answers 503,
a worker retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg import errors
from sqlalchemy import Engine, event


class BoundedConnection(psycopg.Connection):
    # Set per engine (make_engine); None waits as long as it takes.
    answer_within_s: float | None = None

    def wait(self, gen, interval=0.1, timeout=None):
        bound = timeout if timeout is not None else self.answer_within_s
        try:
            return super().wait(gen, interval, bound)
        except errors._WaitTimeout:  # psycopg's own, raised when the bound we passed runs out
            self.close()
            raise psycopg.OperationalError(f"the database did not answer within {bound:g} s; "
                                           "connection closed") from None

    @contextlib.contextmanager
    def answering_within(self, seconds: float) -> Iterator[None]:
        saved, self.answer_within_s = self.answer_within_s, seconds
        try:
            yield
        finally:
            self.answer_within_s = saved


def bound_waits(engine: Engine, answer_within_s: float, ping_within_s: float) -> None:
    """Connections of `engine` are BoundedConnections; its pre-ping waits at most `ping_within_s`."""
    @event.listens_for(engine, "do_connect")
    def _connect(dialect, conn_rec, cargs, cparams):
        connection = BoundedConnection.connect(*cargs, **cparams)
        connection.answer_within_s = answer_within_s
        return connection

    # A ping is a SELECT 1: if it is not answered at once, the server is hung and the
    # connection useless. Without this it would wait as long as any statement may.
    plain_ping = engine.dialect.do_ping

    def bounded_ping(dbapi_connection) -> bool:
        with dbapi_connection.answering_within(ping_within_s):
            return plain_ping(dbapi_connection)

    engine.dialect.do_ping = bounded_ping
