"""Bounds on every call to the broker, shared by the Celery config and every sender."""

from __future__ import annotations

import time

# Redis answers in well under a millisecond; a round trip past this means the
# broker is hung or unreachable (a SIGSTOP, a failover, a dropped NAT entry):
# without a bound, a publish waits forever on the dead socket and so does the
# request behind it. Generous enough for a Redis stalled by a large fork.
BROKER_SOCKET_TIMEOUT_S = 1.5
# A send stops retrying once this long has gone by, so a submission answers
# within about BROKER_SOCKET_TIMEOUT_S even with the broker hung. One quick
# retry still fits: a pooled connection that died with a restarted Redis fails
# at once, and the retry on a fresh connection succeeds.
BROKER_SEND_BUDGET_S = 1.0


REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(REDIS_SCHEMES)


def redis_client_url(broker_url: str) -> str:
    """The broker URL as redis-py spells it: kombu's `redis+socket:///path` is redis-py's `unix:///path`."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url[len("redis+socket://"):]
    return broker_url


def send_policy(budget_s: float = BROKER_SEND_BUDGET_S) -> dict:
    """A `retry_policy` for send_task: retry on a fresh connection until `budget_s` has gone by.

    kombu's own policy counts retries, not time, and each retry can wait a
    whole socket timeout; the errback (called before each retry) raises
    instead once the budget is spent. Build one per send: the clock starts here.
    """
    started = time.monotonic()

    def give_up_when_late(exc: BaseException, interval: float) -> None:
        if time.monotonic() - started + (interval or 0) > budget_s:
            raise exc

    return {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5,
            "errback": give_up_when_late}
