"""Celery task messages for the hot sends, written straight onto the broker's Redis list.

Every accepted job costs one send, and every batch chunk one (validation sends
each chunk it cuts, and each stored chunk sends the next). Through `Celery.send_task` that is about
1.4 ms of CPU (kombu's producer, entity and retry wrappers around one
LPUSH); written here it is about 0.2 ms. The message is byte-for-byte what
kombu's Redis transport writes for the same call (Celery's task protocol
2 inside kombu's JSON envelope, priority 0 on the queue's own list), so the
worker's Celery consumer, Flower and `celery inspect` see no difference.

Only plain Redis brokers (redis://, rediss://, unix sockets) take this path;
anything else, or a deployment that asks for Celery's `task-sent` events,
goes through `send_task` as before.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid

import redis
from celery import Celery

from app.broker import BROKER_SEND_BUDGET_S, BROKER_SOCKET_TIMEOUT_S, redis_client_url, send_policy

# Task protocol 2's third element: no callbacks, no chain, no chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _client_for(url: str) -> redis.Redis | None:
    """A Redis client for a kombu broker URL, or None if the broker is not Redis."""
    if not url.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
        return None
    return redis.Redis.from_url(redis_client_url(url), socket_timeout=BROKER_SOCKET_TIMEOUT_S,
                                socket_connect_timeout=BROKER_SOCKET_TIMEOUT_S)


def task_and_args(message: dict) -> tuple[str, list] | None:
    """The task name and positional arguments of a message in kombu's JSON envelope, as
    `TaskPublisher.message` (or kombu itself) writes it; None for anything else."""
    try:
        task = message["headers"]["task"]
        args = json.loads(base64.b64decode(message["body"]))[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return (task, args) if isinstance(task, str) and isinstance(args, list) else None


class TaskPublisher:
    """Sends Celery task messages with one LPUSH each (or one pipeline for many)."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"

    def message(self, task: str, queue: str, args: list, kwargs: dict) -> bytes:
        task_id = str(uuid.uuid4())
        body = json.dumps([args, kwargs, _EMBED]).encode()
        return json.dumps({
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
                        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
                        "root_id": task_id, "parent_id": None, "argsrepr": repr(args), "kwargsrepr": repr(kwargs),
                        "origin": self._origin, "ignore_result": None, "replaced_task_nesting": 0,
                        "stamped_headers": None, "stamps": {}},
            "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                           "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                           "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
        }).encode()

    def send(self, task: str, queue: str, args: list, kwargs: dict) -> None:
        """Raises redis's ConnectionError or TimeoutError when the broker cannot take it."""
        data = self.message(task, queue, args, kwargs)
        self._retrying(lambda: self._client.lpush(queue, data))

    def send_many(self, task: str, messages: list[tuple[str, list, dict]]) -> None:
        """(queue, args, kwargs) each, as one LPUSH per queue in one round trip, applied whole or
        not at all (several queues: in MULTI/EXEC), so a retry never doubles part of them."""
        by_queue: dict[str, list[bytes]] = {}
        for queue, args, kwargs in messages:
            by_queue.setdefault(queue, []).append(self.message(task, queue, args, kwargs))
        if len(by_queue) == 1:
            [(queue, datas)] = by_queue.items()
            self._retrying(lambda: self._client.lpush(queue, *datas))
            return

        def push_all():
            pipe = self._client.pipeline(transaction=True)
            for queue, datas in by_queue.items():
                pipe.lpush(queue, *datas)
            pipe.execute()
        self._retrying(push_all)

    def _retrying(self, call) -> None:
        # As app.broker.send_policy: a pooled connection that died with a restarted
        # Redis fails at once and the next try gets a fresh one; a hung broker
        # fails within the socket timeout, and the budget stops the retries.
        started = time.monotonic()
        for attempt in range(4):
            try:
                call()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == 3 or time.monotonic() - started + 0.05 * attempt > BROKER_SEND_BUDGET_S:
                    raise
                time.sleep(0.05 * attempt)


_lock = threading.Lock()


def publisher_for(celery: Celery) -> TaskPublisher | None:
    """The app's publisher, made once; None where sends must go through Celery."""
    cached = celery.__dict__.get("_poolq_task_publisher", False)
    if cached is not False:
        return cached
    with _lock:
        cached = celery.__dict__.get("_poolq_task_publisher", False)
        if cached is False:
            conf = celery.conf
            client = None
            prefixed = (conf.broker_transport_options or {}).get("global_keyprefix")
            if not conf.task_send_sent_event and not conf.task_always_eager and not prefixed:
                client = _client_for(conf.broker_url or "")
            cached = TaskPublisher(client) if client is not None else None
            celery.__dict__["_poolq_task_publisher"] = cached
    return cached


def send_task(celery: Celery, task: str, queue: str, args: list, kwargs: dict) -> None:
    """One task message: straight onto the Redis list where the publisher takes it, else through
    Celery. Raises when the broker cannot take it."""
    publisher = publisher_for(celery)
    if publisher is not None:
        publisher.send(task, queue, args, kwargs)
    else:
        celery.send_task(task, args=args, kwargs=kwargs, queue=queue, retry=True, retry_policy=send_policy())
