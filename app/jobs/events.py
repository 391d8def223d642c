"""Telling a waiting API request that its job finished.

Synchronous pooling routes wait for their job. With Redis as the broker the
worker publishes each finished job id on one channel and every API process
has one listener thread that wakes the right waiter; the embedded
filesystem broker has no pub/sub, so waiters poll the database instead.
Either way a waiter also re-reads the job now and then, so a lost message
costs latency, never a wrong answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

CHANNEL = "poolq:jobs:finished"  # prefixed with the deployment's namespace


class PolledJobEvents:
    """No notifications: poll the job, backing off from 2 ms to 50 ms."""

    def publish(self, job_id: str) -> None:
        return None  # nothing listens; waiters poll

    @contextmanager
    def expect(self, job_id: str) -> Iterator[Callable[[float, Callable[[], bool]], bool]]:
        def wait(timeout: float, finished: Callable[[], bool]) -> bool:
            deadline = time.monotonic() + timeout
            delay = 0.002
            while True:
                if finished():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)

        yield wait


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
        try:
            if self._publisher is None:
                import redis

                self._publisher = redis.Redis.from_url(self._url, socket_timeout=2)
            self._publisher.publish(self._channel, str(job_id))
        except Exception:  # waiters fall back to re-reading the job
            log.warning("could not publish completion of job %s", job_id, exc_info=True)

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
        import redis

        while True:
            try:
                pubsub = redis.Redis.from_url(self._url).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                self._subscribed.set()
                for message in pubsub.listen():
                    data = message.get("data")
                    key = data.decode() if isinstance(data, bytes) else str(data)
                    event = self._waiters.get(key)
                    if event is not None:
                        event.set()
            except Exception:
                log.warning("job events listener lost Redis; reconnecting", exc_info=True)
                time.sleep(1.0)


def job_events(broker_url: str, namespace: str = ""):
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisJobEvents(broker_url, namespace)
    return PolledJobEvents()
