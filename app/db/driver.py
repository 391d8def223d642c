"""Postgres statements on the driver's own cursor, inside the caller's SQLAlchemy transaction.

For the few statements where SQLAlchemy's own execution costs more than the work: a COPY
(bulk.py), the worker's group claims and writes (app/jobs/claims.py), a file's bytes in binary
(app/batches/files.py). Their errors are
raised as SQLAlchemy raises them for its own statements, so callers (the worker's store,
which retries a lost connection's transaction) see one kind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError


def driver_rows(connection: Connection, statement: str, params: dict) -> list[tuple]:
    """A Postgres statement's rows, run on the driver's own cursor in the caller's transaction.
    For the worker's group statements: SQLAlchemy's `exec_driver_sql` added ~0.15 ms of CPU to
    each (its execution context, parameter and result processing, Row objects), as much as
    psycopg's own work for a claim of nine jobs."""
    with as_sqlalchemy_raises(connection, statement) as raw, raw.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()


@contextlib.contextmanager
def as_sqlalchemy_raises(conn: Connection, statement: str) -> Iterator[psycopg.Connection]:
    """The driver's connection under `conn`, whose errors are raised as SQLAlchemy raises them
    for its own statements."""
    raw = conn.connection.driver_connection
    try:
        yield raw
    except psycopg.Error as exc:
        # As SQLAlchemy raises it for its own statements: a lost connection is an
        # OperationalError on an invalidated connection (the store retries the
        # transaction on a fresh one), anything else the statement's own error.
        gone = raw.broken or raw.closed
        if gone:
            conn.invalidate(exc)
        raise DBAPIError.instance(statement, None, exc, psycopg.Error, connection_invalidated=gone,
                                  dialect=conn.dialect) from exc
