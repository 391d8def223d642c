"""SIGTERM in a worker process: one grace period, shared by everything that drains.

Celery stops consuming, then runs each consumer step's `shutdown` in turn.
A worker may hold scheduler work and webhook attempts at once, so every drain
waits against the same deadline, fixed when the first one starts: the whole
shutdown fits in POOLQ_SHUTDOWN_GRACE_S, not once per kind of work.
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_deadline: float | None = None


def grace_deadline(grace_s: float) -> float:
    """The time.monotonic() by which every drain of this process hands back what is left."""
    global _deadline
    with _lock:
        if _deadline is None:
            _deadline = time.monotonic() + grace_s
        return _deadline


def grace_left(grace_s: float) -> float:
    return max(0.0, grace_deadline(grace_s) - time.monotonic())


def install_webhook_drain(celery, grace_s: float) -> None:
    """On shutdown: finish the webhook attempts in flight within the grace, hand back the rest."""
    from celery import bootsteps

    from app.webhooks.inflight import IN_FLIGHT, hand_back

    class HandBackWebhooks(bootsteps.StartStopStep):
        """`close` runs once, when the worker shuts down (a broker reconnect only stops and
        restarts the consumer's steps), and before the pool stops: the pool would otherwise
        wait for every attempt, however long its endpoint takes to answer."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def close(self, parent):
            hand_back(celery.poolq, IN_FLIGHT.stop(grace_deadline(grace_s)))

    celery.steps["consumer"].add(HandBackWebhooks)
