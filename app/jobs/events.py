"""Telling a waiting API request that its job finished.

Synchronous pooling routes wait for their job. The worker publishes each
finished job id on one Redis channel (the broker's Redis, the embedded one
included) and every API process has one listener thread that wakes the
right waiter. A waiter also re-reads the job now and then, so a lost
message costs latency, never a wrong answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.broker import BROKER_SOCKET_TIMEOUT_S

log = logging.getLogger(__name__)

CHANNEL = "poolq:jobs:finished"  # prefixed with the deployment's namespace

# Every Redis call here is bounded (see app.broker): a hung Redis costs a
# publisher one timeout, never a stuck worker thread.
SOCKET_TIMEOUT_S = BROKER_SOCKET_TIMEOUT_S
# The listener pings after this long without hearing anything, and drops the
# connection if the pong is this late: a connection that died silently (a
# failover, a NAT timeout) is replaced instead of listening to nothing forever.
LISTEN_CHECK_S = 10.0
PONG_WAIT_S = 5.0


def redis_client(url: str, read_timeout_s: float | None = SOCKET_TIMEOUT_S):
    """A client whose every call is bounded, retried once on a fresh connection
    (a pooled one that died with a restarted Redis), and no more."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_connect_timeout=SOCKET_TIMEOUT_S, socket_timeout=read_timeout_s,
                                retry=Retry(NoBackoff(), 1))


class RedisJobEvents:
    # A waiter re-reads the job this often even without a notification.
    RECHECK_S = 0.5

    def __init__(self, url: str, namespace: str = ""):
        self._url = url
        self._channel = f"{namespace}{CHANNEL}"
        self._waiters: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._listener_pid: int | None = None
        self._publisher = None

    def publish(self, job_id: str) -> None:
        self.publish_many([job_id])

    def publish_many(self, job_ids) -> None:
        """Every id in one round trip (a pipeline of PUBLISHes): a worker finishes jobs in groups."""
        try:
            if self._publisher is None:
                import redis

                self._publisher = redis.Redis.from_url(self._url, socket_timeout=2, socket_connect_timeout=2)
            pipe = self._publisher.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.publish(self._channel, str(job_id))
            pipe.execute()
        except Exception:  # waiters fall back to re-reading the job
            log.warning("could not publish completion of %d job(s)", len(list(job_ids)), exc_info=True)

    @contextmanager
    def expect(self, job_id: str) -> Iterator[Callable[[float, Callable[[], bool]], bool]]:
        """Register before the job is sent, so its completion cannot be missed."""
        self._ensure_listener()
        event = threading.Event()
        key = str(job_id)
        with self._lock:
            self._waiters[key] = event

        def wait(timeout: float, finished: Callable[[], bool]) -> bool:
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return finished()
                if event.wait(min(self.RECHECK_S, remaining)) or finished():
                    return True

        try:
            yield wait
        finally:
            with self._lock:
                self._waiters.pop(key, None)

    def _ensure_listener(self) -> None:
        # One listener per process; a forked gunicorn worker starts its own.
        if self._listener_pid == os.getpid():
            return
        with self._lock:
            if self._listener_pid != os.getpid():
                self._listener_pid = os.getpid()
                self._subscribed.clear()
                threading.Thread(target=self._listen, name="poolq-job-events", daemon=True).start()
        self._subscribed.wait(timeout=1.0)

    def _listen(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                self._listen_once()
            except Exception as exc:
                if time.monotonic() - started > LISTEN_CHECK_S:
                    failures = 0  # it had been listening: a new outage
                # The traceback once per outage, not once a second for as long as it lasts.
                if failures == 0:
                    log.warning("job events listener lost Redis; reconnecting", exc_info=True)
                else:
                    log.debug("job events listener still without Redis: %s", exc)
                failures += 1
                time.sleep(min(float(failures), 5.0))

    def _listen_once(self) -> None:
        pubsub = redis_client(self._url).pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._channel)
            self._subscribed.set()
            last_heard, pinged = time.monotonic(), False
            while True:
                message = pubsub.get_message(timeout=1.0)  # bounded: the checks below get their turn
                now = time.monotonic()
                if message is not None:
                    last_heard, pinged = now, False
                    if message.get("type") == "message":
                        self._wake(message.get("data"))
                    continue
                silent = now - last_heard
                if silent > LISTEN_CHECK_S + PONG_WAIT_S:
                    raise TimeoutError(f"no answer from Redis for {silent:.0f} s")
                if silent > LISTEN_CHECK_S and not pinged:
                    pubsub.ping()  # its pong comes back as a message and resets the clock
                    pinged = True
        finally:
            pubsub.close()

    def _wake(self, data) -> None:
        key = data.decode() if isinstance(data, bytes) else str(data)
        event = self._waiters.get(key)
        if event is not None:
            event.set()


def job_events(broker_url: str, namespace: str = "") -> RedisJobEvents:
    """`broker_url` as redis-py spells it (app.broker.redis_client_url): every deployment,
    the embedded one included, has Redis as its broker."""
    return RedisJobEvents(broker_url, namespace)
