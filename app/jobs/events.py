"""Telling a waiting API request that its job (or batch) finished.

Synchronous pooling routes wait for their job; `GET /v1/jobs/{id}` and
`GET /v1/batches/{id}` with `Prefer: wait=N` wait for it to finish (a long
poll). The worker publishes each finished job id, and each ended batch's,
on one Redis channel (the broker's Redis, the embedded one included) and
every API process has one listener thread that wakes the right waiter. A waiter also re-reads the job now and then, so a lost
message costs latency, never a wrong answer. A small succeeded result rides
with its message (the JSON text stored, byte for byte), so the waiter
answers without a read of it from the database.

A cancel is announced twice (`publish_cancelled`): on the same channel, so a
request waiting for the job answers at once, and on a channel of its own
(`CANCELLED_CHANNEL`) that every worker listens to (`listen_for_cancels`), so
the worker running the job stops it at its next slice. Workers do not take
the completion channel: under small-job load it carries hundreds of messages
a second, none of them for a worker. The announcement only says "look now":
the worker asks the database whether it still holds the job, and a lost one
costs the worker's heartbeat (lease/3) at most.

A group write's completions go out as one message (`GROUP_MARK`, then one
line per job): each API process's listener then wakes for a group, not for
each of its jobs, and Redis fans out one message. A single completion keeps
the one-line form. A listener that predates groups takes a group's first
line and a half for a key no waiter has, and so ignores it: its waiters
fall back to their rechecks, never to a wrong result.
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
CANCELLED_CHANNEL = "poolq:jobs:cancelled"  # one job id a line
# A message of several completions starts with this line. Result JSON never holds a raw
# newline (app.jsontext writes none), so the lines are the completions.
GROUP_MARK = "group"
# A group's completions are split over messages of at most about this many characters.
GROUP_MESSAGE_MAX = 1 << 20

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
        self._cancelled_channel = f"{namespace}{CANCELLED_CHANNEL}"
        self._waiters: dict[str, Waiter] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._listener_pid: int | None = None
        self._publisher = None

    def publish(self, job_id: str) -> None:
        self.publish_many([job_id])

    def publish_many(self, finished) -> None:
        """Every finished job in one round trip (a worker finishes jobs in groups), their
        completions in one message (a few, for a group past GROUP_MESSAGE_MAX). Each item is a
        job id, or (job id, result JSON) for a succeeded job whose stored result is small: it
        travels with the message, and its waiter answers without reading it back from the
        database."""
        finished = list(finished)
        try:
            pipe = self._publishing().pipeline(transaction=False)
            for message in completion_messages(finished):
                pipe.publish(self._channel, message)
            pipe.execute()
        except Exception:  # waiters fall back to re-reading the job
            log.warning("could not publish completion of %d job(s)", len(finished), exc_info=True)

    def publish_cancelled(self, job_id: str) -> None:
        """A job was cancelled: its waiters answer, and the worker running it stops it, now.
        Both in one round trip; if it fails, the waiters' rechecks and the worker's heartbeat
        notice it instead."""
        try:
            pipe = self._publishing().pipeline(transaction=False)
            pipe.publish(self._channel, str(job_id))
            pipe.publish(self._cancelled_channel, str(job_id))
            pipe.execute()
        except Exception:
            log.warning("could not announce the cancel of job %s", job_id, exc_info=True)

    def _publishing(self):
        if self._publisher is None:
            import redis

            self._publisher = redis.Redis.from_url(self._url, socket_timeout=2, socket_connect_timeout=2)
        return self._publisher

    def listen_for_cancels(self, on_cancelled: Callable[[list[str]], None]) -> threading.Thread:
        """A worker's thread that calls `on_cancelled(job ids)` for each cancel announced."""
        subscribed = threading.Event()

        def on_message(data) -> None:
            text = data.decode() if isinstance(data, bytes) else str(data)
            on_cancelled([line for line in text.split("\n") if line])

        thread = threading.Thread(target=listen_forever, args=(self._url, self._cancelled_channel, on_message,
                                                               subscribed, "cancel"),
                                  name="poolq-cancels", daemon=True)
        thread.start()
        subscribed.wait(timeout=1.0)
        return thread

    @contextmanager
    def expect(self, job_id: str) -> Iterator[Waiter]:
        """Register before the job is sent, so its completion cannot be missed."""
        self._ensure_listener()
        waiter = Waiter(self.RECHECK_S)
        key = str(job_id)
        with self._lock:
            self._waiters[key] = waiter
        try:
            yield waiter
        finally:
            with self._lock:
                self._waiters.pop(key, None)

    def wait_for(self, key: str, timeout: float, finished: Callable[[], bool]) -> bool:
        """A long poll: True as soon as `key` (a job or batch id) is announced finished or
        `finished()` says so, False after `timeout`. The waiter is registered before the first
        check, so a completion between the caller's own read and this call is not missed."""
        with self.expect(key) as waiter:
            return finished() or waiter(timeout, finished)

    def _ensure_listener(self) -> None:
        # One listener per process; a forked gunicorn worker starts its own.
        if self._listener_pid == os.getpid():
            return
        with self._lock:
            if self._listener_pid != os.getpid():
                self._listener_pid = os.getpid()
                self._subscribed.clear()
                threading.Thread(target=listen_forever, name="poolq-job-events", daemon=True,
                                 args=(self._url, self._channel, self._wake, self._subscribed, "job events")).start()
        self._subscribed.wait(timeout=1.0)

    def _wake(self, data) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        for line in (text.split("\n")[1:] if text.startswith(GROUP_MARK + "\n") else (text,)):
            key, _, result_json = line.partition(" ")
            waiter = self._waiters.get(key)
            if waiter is not None:
                waiter.finished(result_json or None)


def listen_forever(url: str, channel: str, on_message: Callable, subscribed: threading.Event, what: str) -> None:
    """Subscribe to `channel` and hand each message's data to `on_message`, for as long as the
    process lives: a lost connection is replaced (after 1, 2, ... up to 5 s), a silent one too."""
    failures = 0
    while True:
        started = time.monotonic()
        try:
            _listen_once(url, channel, on_message, subscribed)
        except Exception as exc:
            if time.monotonic() - started > LISTEN_CHECK_S:
                failures = 0  # it had been listening: a new outage
            # The traceback once per outage, not once a second for as long as it lasts.
            if failures == 0:
                log.warning("%s listener lost Redis; reconnecting", what, exc_info=True)
            else:
                log.debug("%s listener still without Redis: %s", what, exc)
            failures += 1
            time.sleep(min(float(failures), 5.0))


def _listen_once(url: str, channel: str, on_message: Callable, subscribed: threading.Event) -> None:
    pubsub = redis_client(url).pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel)
        subscribed.set()
        last_heard, pinged = time.monotonic(), False
        while True:
            message = pubsub.get_message(timeout=1.0)  # bounded: the checks below get their turn
            now = time.monotonic()
            if message is not None:
                last_heard, pinged = now, False
                if message.get("type") == "message":
                    on_message(message.get("data"))
                continue
            silent = now - last_heard
            if silent > LISTEN_CHECK_S + PONG_WAIT_S:
                raise TimeoutError(f"no answer from Redis for {silent:.0f} s")
            if silent > LISTEN_CHECK_S and not pinged:
                pubsub.ping()  # its pong comes back as a message and resets the clock
                pinged = True
    finally:
        pubsub.close()


def completion_messages(finished: list) -> list[str]:
    """The messages that announce `finished` (ids, or (id, result JSON) pairs): one line
    alone, or GROUP_MARK and a line each, in messages of about GROUP_MESSAGE_MAX at most."""
    lines = list(map(_completion_line, finished))
    if len(lines) == 1:
        return lines
    messages, group, size = [], [GROUP_MARK], 0
    for line in lines:
        if size + len(line) > GROUP_MESSAGE_MAX and len(group) > 1:
            messages.append("\n".join(group))
            group, size = [GROUP_MARK], 0
        group.append(line)
        size += len(line) + 1
    messages.append("\n".join(group))
    return messages


def _completion_line(item) -> str:
    job_id, result_json = item if isinstance(item, tuple) else (item, None)
    return str(job_id) if result_json is None else f"{job_id} {result_json}"


class Waiter:
    """One request waiting for its job: `waiter(timeout, finished)` returns once the job is
    finished (notified, or `finished()` says so at a recheck) or the timeout passed; then
    `result_json` is the stored result if it came with the notification, else None."""

    def __init__(self, recheck_s: float):
        self._event = threading.Event()
        self._recheck_s = recheck_s
        self.result_json: str | None = None

    def finished(self, result_json: str | None) -> None:
        self.result_json = result_json
        self._event.set()

    def __call__(self, timeout: float, finished: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return finished()
            if self._event.wait(min(self._recheck_s, remaining)) or finished():
                return True


def job_events(broker_url: str, namespace: str = "") -> RedisJobEvents:
    """`broker_url` as redis-py spells it (app.broker.redis_client_url): every deployment,
    the embedded one included, has Redis as its broker."""
    return RedisJobEvents(broker_url, namespace)
