"""The webhook attempts this process is making, so that a shutdown hands them back at once.

A claimed attempt holds its delivery row for a lease (connect + read timeouts
+ 30 s, delivery.claim_attempt), so that no other worker makes the same
attempt meanwhile. A worker stopped mid-request would leave its deliveries
waiting out that lease. On SIGTERM the worker instead:

1. starts no new attempt (a message taken after the stop is sent again, untouched);
2. waits up to POOLQ_SHUTDOWN_GRACE_S for its attempts to finish and be recorded;
3. hands back the rest: each is logged as interrupted and made due now, a fresh
   message goes to the queue for another worker, and the connection to the
   endpoint is cut, so neither the thread nor the process waits on it.
"""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from app.db.base import utcnow
from app.webhooks import delivery
from app.webhooks.delivery import ClaimedAttempt

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    claimed: ClaimedAttempt
    started_at: dt.datetime = field(default_factory=utcnow)
    connection: http.client.HTTPConnection | None = None

    def opened(self, connection: http.client.HTTPConnection) -> None:
        self.connection = connection

    def cut(self) -> None:
        """Wake the thread waiting on the endpoint: shutdown, unlike close, interrupts a blocked read."""
        sock = self.connection.sock if self.connection is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: the thread is past its wait


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: dict[uuid.UUID, Attempt] = {}
        self._claiming = 0
        self._stopping = False

    def admit(self) -> bool:
        """Before a claim: False once the worker is stopping (the caller sends its message again)."""
        with self._lock:
            if self._stopping:
                return False
            self._claiming += 1
            return True

    def started(self, claimed: ClaimedAttempt | None) -> Attempt | None:
        """After an admitted claim, whatever came of it (None: nothing was claimed)."""
        with self._lock:
            self._claiming -= 1
            if claimed is None:
                return None
            attempt = self._attempts[claimed.delivery_id] = Attempt(claimed)
            return attempt

    def finished(self, attempt: Attempt) -> bool:
        """True: record the outcome. False: the shutdown handed the attempt back already."""
        with self._lock:
            return self._attempts.pop(attempt.claimed.delivery_id, None) is attempt

    def stop(self, deadline: float) -> list[Attempt]:
        """Take no more work; wait until `deadline` (time.monotonic) for what is in flight to
        finish; the attempts still unfinished, which are no longer this process's to record."""
        with self._lock:
            self._stopping = True
        # A claim being made counts too: its attempt would otherwise start after the hand-back.
        while time.monotonic() < deadline and (self._attempts or self._claiming):
            time.sleep(0.05)
        while self._claiming:  # a claim is one statement, itself bounded (app/db/session.py)
            time.sleep(0.05)
        with self._lock:
            left = list(self._attempts.values())
            self._attempts.clear()
        return left


IN_FLIGHT = InFlight()


def hand_back(poolq, attempts: list[Attempt], tries_for_s: float = 5.0) -> None:
    """Make `attempts` due now and send each a fresh message; then cut their connections.

    The database first: a message sent while the row still held its lease
    would be ignored as not due. If the database cannot be reached within
    `tries_for_s`, the rows keep their leases and the sweeper sends them once
    those lapse: later, but nothing is lost.
    """
    from app.webhooks.dispatch import send_deliveries

    if not attempts:
        return
    released: list[uuid.UUID] = []
    started = time.monotonic()
    while True:
        try:
            with poolq.session_factory() as session:
                released = [a.claimed.delivery_id for a in attempts
                            if delivery.hand_back(session, a.claimed, a.started_at)]
                session.commit()
            break
        except Exception:  # noqa: BLE001 - any database error: retry briefly, then leave it to the leases
            if time.monotonic() - started > tries_for_s:
                log.warning("could not hand back %d webhook attempt(s); they wait for their leases",
                            len(attempts), exc_info=True)
                break
            time.sleep(0.2)
    send_deliveries(poolq.celery, released)
    for attempt in attempts:
        attempt.cut()
    log.warning("shutting down: handed back %d webhook attempt(s) still waiting on their endpoints",
                len(released))
