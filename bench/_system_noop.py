"""The bare Celery baseline for bench/system.py: a no-op task on the same Redis.

Worker: `celery -A _system_noop worker --pool=threads --concurrency=8` (with
bench/ on PYTHONPATH). Each task only INCRs a Redis counter, so the sender
knows when all K tasks completed. Settings are Celery's defaults plus what
the performance reference names: threads pool, acks_late, JSON; no task
events, no result backend.
"""
from __future__ import annotations

import os
import threading

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_NOOP_BROKER", "redis://127.0.0.1:6379/11")
QUEUE = "bench.noop"
COUNTER = "bench:noop:done"

app = Celery("bench_noop", broker=BROKER)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_ignore_result=True,
    result_backend=None,
    worker_prefetch_multiplier=4,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)

_local = threading.local()


def _redis() -> redis.Redis:
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = redis.Redis.from_url(BROKER)
    return client


@app.task(name="bench.noop")
def noop() -> None:
    _redis().incr(COUNTER)
