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
import time

from celery.utils.saferepr import saferepr

from workers.scheduler.held import Delivery

log = logging.getLogger(__name__)

_scheduler = None


def install(scheduler) -> None:
    """The process's scheduler, which the strategies below feed."""
    global _scheduler
    _scheduler = scheduler


def _events(task, consumer):
    eventer = consumer.event_dispatcher
    if not (eventer and eventer.enabled and task.send_events):
        return None
    return eventer.send


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

    def handle(message, body, ack, reject, callbacks, **_):
        task_id = message.headers.get("id", "")
        try:
            args, kwargs, _embed = message.decode()
            kind, key, model = parse(args, kwargs)
        except Exception:  # noqa: BLE001 - a message we cannot read would otherwise come back forever
            log.error("%s message %s cannot be read; dropped", task.name, task_id, exc_info=True)
            message.ack()
            return
        if send_event is not None:
            send_event("task-received", uuid=task_id, name=task.name, args=saferepr(args),
                       kwargs=saferepr(kwargs), root_id=message.headers.get("root_id"),
                       parent_id=message.headers.get("parent_id"), retries=0, eta=None, expires=None)
        scheduler.receive(kind, key, model, Delivery(message, task_id))

    return handle
