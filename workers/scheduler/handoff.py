"""Celery hands `run_job` and `run_batch_chunk` messages to the scheduler, not to its pool.

A Celery task's Strategy is what its consumer calls for each message it
receives; the default one builds a Request and queues it for a pool thread.
Ours parses the message and hands it to the scheduler in the consumer
thread: no pool thread, no Request, no thread per job in flight. The
message stays unacked until the transaction that settles its work commits
(acks_late), so a worker killed at any point leaves it to the broker and
the job's lease. Flower still sees every job: `task-received` here with the
job id and model, `task-succeeded` when its work is settled.

The number of messages in flight is the consumer's prefetch
(POOLQ_MAX_JOBS_IN_FLIGHT, see workers/main.py), which is what bounds the
jobs a worker holds.
"""
from __future__ import annotations

import logging
import threading
import time

from workers.scheduler.held import Delivery
from workers.scheduler.redis_channel import batch_reads, reuse_client

log = logging.getLogger(__name__)

_scheduler = None
# The longest task-received event argument text (Flower shows it).
REPR_MAX = 1024


def install(scheduler) -> None:
    """The process's scheduler, which the strategies below feed."""
    global _scheduler
    _scheduler = scheduler


class BatchedEvents:
    """Flower's task events, sent in batches every `interval_s` instead of one by one.

    Celery's dispatcher publishes its buffered task events at every turn of
    the consumer's loop, which with jobs arriving one at a time is one kombu
    publish per event, two per job: about as much CPU as the rest of a small
    job's bookkeeping. Held here, the events of a tenth of a second go out
    as one `task.multi` message; Flower shows them that much later.
    """

    def __init__(self, send, interval_s: float = 0.1):
        self.send = send  # rebound when Celery's consumer restarts with a new dispatcher
        self._interval_s = interval_s
        self._pending: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._loop, name="poolq-task-events", daemon=True).start()

    def __call__(self, type_: str, **fields) -> None:
        fields.setdefault("timestamp", time.time())  # when it happened, not when it is sent
        with self._lock:
            self._pending.append((type_, fields))

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval_s)
            with self._lock:
                pending, self._pending = self._pending, []
            for type_, fields in pending:
                try:
                    # Buffered by Celery's dispatcher ("task" group); its next flush sends them all.
                    self.send(type_, **fields)
                except Exception:  # noqa: BLE001 - monitoring never fails work
                    log.debug("task event not sent", exc_info=True)


_batched: BatchedEvents | None = None


class _ReadGroup:
    """The messages of one batched read (redis_channel.batch_reads), handed to the scheduler
    together so that its admission claims them in one transaction; outside a batched read
    (another transport) each goes on alone. The consumer's thread is the only caller."""

    def __init__(self):
        self._items: list | None = None

    def begin(self) -> None:
        self._items = []

    def end(self) -> None:
        items, self._items = self._items, None
        if items and _scheduler is not None:
            _scheduler.receive_many(items)

    def receive(self, item: tuple) -> None:
        if self._items is not None:
            self._items.append(item)
        else:
            _scheduler.receive_many([item])


_read_group = _ReadGroup()


def _events(task, consumer):
    global _batched
    eventer = consumer.event_dispatcher
    if not (eventer and eventer.enabled and task.send_events):
        return None
    if _batched is None:
        _batched = BatchedEvents(eventer.send)
    _batched.send = eventer.send
    return _batched


def job_strategy(task, app, consumer, **kwargs):
    return _strategy(task, app, consumer, kwargs, lambda args, kw: ("job", args[0], kw.get("model")))


def chunk_strategy(task, app, consumer, **kwargs):
    return _strategy(task, app, consumer, kwargs, lambda args, kw: ("chunk", (args[0], int(args[1])), kw.get("model")))


def _strategy(task, app, consumer, options, parse):
    scheduler = _scheduler
    if scheduler is None:
        # A worker without engines (the webhooks service) registers every task
        # but never consumes a model's queue; Celery's own strategy is its
        # placeholder, and the task body refuses to run.
        from celery.worker.strategy import default

        return default(task, app, consumer, **options)
    send_event = _events(task, consumer)
    if send_event is not None:
        def succeeded(task_id: str, held) -> None:
            try:
                send_event("task-succeeded", uuid=task_id, result=repr(held.state.value),
                           runtime=round(time.monotonic() - held.since, 4))
            except Exception:  # noqa: BLE001 - monitoring never fails work
                log.debug("task event not sent", exc_info=True)

        scheduler.task_event = succeeded

    seen_channel = None

    def handle(message, body, ack, reject, callbacks, **_):
        nonlocal seen_channel
        if message.channel is not seen_channel:  # the first message, or one after a reconnect
            seen_channel = message.channel
            reuse_client(seen_channel)
            batch_reads(seen_channel, _read_group.begin, _read_group.end)
        task_id = message.headers.get("id", "")
        try:
            args, kwargs, _embed = message.decode()
            kind, key, model = parse(args, kwargs)
        except Exception:  # noqa: BLE001 - a message we cannot read would otherwise come back forever
            log.error("%s message %s cannot be read; dropped", task.name, task_id, exc_info=True)
            message.ack()
            return
        if send_event is not None:
            # Plain repr, capped: these arguments are an id, an index and a model name, and
            # Celery's saferepr took 45 us a message on the consumer's thread, the worker's busiest.
            send_event("task-received", uuid=task_id, name=task.name, args=repr(args)[:REPR_MAX],
                       kwargs=repr(kwargs)[:REPR_MAX], root_id=message.headers.get("root_id"),
                       parent_id=message.headers.get("parent_id"), retries=0, eta=None, expires=None)
        _read_group.receive((kind, key, model, Delivery(message, task_id)))

    return handle
