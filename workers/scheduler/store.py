"""The scheduler's database side: group transactions, each retried until the database answers.

A transient error (a connection reset, a failover, a deadlock victim) never
fails work: the same transaction is tried again with backoff, with the same
inputs, and every statement in it is a compare-and-set, so a transaction
that did commit before its connection died changes nothing the second time.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """An error of the database or the connection, not of the statement."""
    if isinstance(exc, OperationalError):
        return True  # connection lost, admin shutdown, deadlock detected, lock timeout
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Store:
    def __init__(self, session_factory: sessionmaker[Session]):
        self._sessions = session_factory

    def transact(self, what: str, work: Callable[[Session], T], max_wait_s: float = 2.0,
                 give_up_after_s: float | None = None) -> T:
        """Run `work` in one transaction and commit; on a transient error, again until it commits.

        `give_up_after_s` bounds the retries (a heartbeat gives up and tries at
        its next beat); None retries for as long as it takes.
        """
        delay, started = 0.05, time.monotonic()
        while True:
            session = self._sessions()
            try:
                result = work(session)
                session.commit()
                return result
            except Exception as exc:
                session.rollback()
                if not transient(exc):
                    raise
                waited = time.monotonic() - started
                if give_up_after_s is not None and waited > give_up_after_s:
                    raise
                log.warning("%s: the database is unavailable (%s); retrying in %.2f s", what,
                            type(exc.orig if isinstance(exc, DBAPIError) else exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, max_wait_s)
            finally:
                session.close()
