"""COMMIT where the client's answer depends on it: an error reaches the client only if nothing was kept.

A connection lost during COMMIT leaves it unknown whether the server
committed. A fresh read settles it, so a kept row is never answered 503: a
client retrying without an Idempotency-Key would make it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# What the database raises when it is unreachable, restarting or hung, as
# opposed to refusing the statement itself.
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)


def commit_kept(session: Session, is_kept: Callable[[], bool], what: str) -> None:
    """COMMIT, or raise if `what` is not kept. `is_kept` reads on a fresh connection."""
    try:
        session.commit()
    except UNAVAILABLE:
        try:
            session.rollback()
        except Exception:  # the connection is gone; the session is discarded with the request anyway
            log.debug("rollback after a failed commit raised", exc_info=True)
        try:
            kept = is_kept()
        except UNAVAILABLE:
            kept = False  # still unknown: the error says "retry" (an Idempotency-Key makes that safe)
        if not kept:
            raise
        log.warning("the commit of %s raised, but it is kept", what, exc_info=True)
