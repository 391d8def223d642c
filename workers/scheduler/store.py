"""The scheduler's database side: group transactions, each retried until the database answers.

A transient error (a connection reset, a failover, a deadlock victim) never
fails work: the same transaction is tried again with backoff, with the same
inputs, and every statement in it is a compare-and-set, so a transaction
that did commit before its connection died changes nothing the second time.

Each thread that writes (admission, the writers, the heartbeat, the cancel
check) keeps one connection of the pool for all its transactions, and a
transaction makes a Session only if its statements need one (`_Transaction`).
A Session of its own sessionmaker per transaction, checking a connection out
of the pool and back in (a rollback on the way back), made a claim of nine
one-text jobs cost 1.0-1.6 ms of CPU, against 0.55-0.75 on a kept connection
with the statement on the driver's cursor (one process, 2 vCPUs), and the
scheduler runs one claim and one group write per turn of its stages. A kept
connection found broken is thrown away and the transaction retried on a new
one, as a pooled one was; one older than the pool's recycle age goes back to
the pool, which replaces it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from app.db.session import POOL_RECYCLE_S

log = logging.getLogger(__name__)

T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """An error of the database or the connection, not of the statement."""
    if isinstance(exc, OperationalError):
        return True  # connection lost, admin shutdown, deadlock detected, lock timeout
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class _Transaction:
    """What a transaction's `work` is given in place of a Session. Its `connection()` is the
    thread's kept connection, in the transaction, with no Session made: the group claims and
    writes (app/jobs/claims.py) run plain statements on it, and a Session's own begin, commit
    and close took as much CPU again as the claim of nine one-text jobs (0.3-0.4 ms, 2 vCPUs).
    Anything else a Session has (the ORM: a webhook's delivery rows, a batch's rows) makes the
    Session on first use, bound to that connection and in control of its transaction."""

    __slots__ = ("_connection", "session")

    def __init__(self, connection: Connection):
        self._connection = connection
        self.session: Session | None = None

    def connection(self) -> Connection:
        return self._connection

    def __getattr__(self, name: str):
        if self.session is None:
            # control_fully: the Session commits, rolls back and (closing) ends the connection's
            # transaction as if it had begun it.
            self.session = Session(bind=self._connection, expire_on_commit=False,
                                   join_transaction_mode="control_fully")
        return getattr(self.session, name)


class Store:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._kept = threading.local()  # .connection, .since: this thread's connection

    def transact(self, what: str, work: Callable[[Session], T], max_wait_s: float = 2.0,
                 give_up_after_s: float | None = None) -> T:
        """Run `work` in one transaction and commit; on a transient error, again until it commits.
        `work` is given a Session's stand-in (`_Transaction`).

        `give_up_after_s` bounds the retries (a heartbeat gives up and tries at
        its next beat); None retries for as long as it takes.
        """
        delay, started = 0.05, time.monotonic()
        while True:
            tx = transaction = None
            try:
                connection = self._connection()
                transaction = connection.begin()
                tx = _Transaction(connection)
                result = work(tx)
                (tx.session or transaction).commit()
                return result
            except Exception as exc:
                retry = broken = transient(exc)
                try:
                    if tx is not None and tx.session is not None:
                        tx.session.rollback()
                    elif transaction is not None:
                        transaction.rollback()
                except Exception:  # noqa: BLE001 - a lost connection cannot roll back; it is thrown away
                    broken = True
                if broken:
                    self._discard()
                if not retry:
                    raise
                waited = time.monotonic() - started
                if give_up_after_s is not None and waited > give_up_after_s:
                    raise
                log.warning("%s: the database is unavailable (%s); retrying in %.2f s", what,
                            type(exc.orig if isinstance(exc, DBAPIError) else exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, max_wait_s)
            finally:
                if tx is not None and tx.session is not None:
                    tx.session.close()

    def _connection(self) -> Connection:
        kept = self._kept
        connection = getattr(kept, "connection", None)
        if connection is not None and (connection.invalidated or connection.closed):
            self._discard()
            connection = None
        elif connection is not None and time.monotonic() - kept.since > POOL_RECYCLE_S:
            connection.close()  # back to the pool, which replaces it: it is past the pool's recycle age
            connection = None
        if connection is None:
            connection = kept.connection = self._engine.connect()
            kept.since = time.monotonic()
        return connection

    def _discard(self) -> None:
        """Throw this thread's connection away: the pool makes a new one for the next transaction."""
        connection = getattr(self._kept, "connection", None)
        self._kept.connection = None
        if connection is None:
            return
        try:
            if not connection.closed and not connection.invalidated:
                connection.invalidate()  # its protocol state is unknown: never back to the pool as it is
            connection.close()
        except Exception:  # noqa: BLE001 - already gone
            log.debug("discarding a broken connection", exc_info=True)
