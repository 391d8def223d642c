"""Celery, configured from poolq's settings (Flask's `celery_init_app` pattern)."""

from __future__ import annotations

from celery import Celery
from flask import Flask

from app.batches.dispatch import EXPIRE_BATCHES, SWEEP_BATCHES
from app.broker import BROKER_SOCKET_TIMEOUT_S
from app.config import Settings
from app.schedules import FIRE_SCHEDULES
from app.webhooks.dispatch import SWEEP_WEBHOOKS, webhook_queue

SWEEP_JOBS = "poolq.sweep_jobs"
EXPIRE_JOBS = "poolq.expire_jobs"


def broker_options(settings: Settings) -> dict:
    # A message not acked within this window is delivered again. A
    # running job or chunk is protected by its lease (a redelivery finds it
    # held, is acked and does nothing), so what this brings back that
    # matters is the few messages a worker died with before it claimed them
    # (its admission claims within milliseconds): a minute, not an hour.
    return {"visibility_timeout": settings.redeliver_after_s,
            # kombu scans for such messages every 10 s x 10 (a busy worker) or
            # every 10th idle poll, under a Redis mutex that a worker killed
            # mid-scan holds for 300 s: that alone could hold them back five
            # minutes. A scan is one ZRANGE: every 5 s, and a mutex that lapses.
            "unacked_restore_interval": 5, "unacked_restore_throttle": 1, "unacked_mutex_expire": 15,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S, "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_S}


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    celery = Celery(app.name)
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        # AMQP's connect timeout (Redis takes socket_connect_timeout above).
        broker_connection_timeout=BROKER_SOCKET_TIMEOUT_S,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # At-least-once delivery: ack after the job's final write, and give the
        # message back if the worker process dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=4,
        task_default_queue=settings.maintenance_queue,
        # Flower shows received/started/succeeded events with the job id and
        # model (POOLQ_TASK_EVENTS=0 trades that for throughput), and the
        # sent event only with POOLQ_TASK_SENT_EVENTS=1 (see Settings).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events and settings.task_sent_events,
        worker_hijack_root_logger=False,
        beat_schedule={
            # Cheap (an indexed query and a queue length per model), and it bounds how
            # long a job whose message was lost waits: POOLQ_REQUEUE_AFTER_S + this.
            "sweep-jobs": {"task": SWEEP_JOBS, "schedule": 10.0, "options": {"queue": settings.maintenance_queue}},
            "expire-jobs": {"task": EXPIRE_JOBS, "schedule": 3600.0, "options": {"queue": settings.maintenance_queue}},
            "sweep-webhooks": {"task": SWEEP_WEBHOOKS, "schedule": 15.0, "options": {"queue": webhook_queue(settings)}},
            "sweep-batches": {"task": SWEEP_BATCHES, "schedule": 30.0, "options": {"queue": settings.maintenance_queue}},
            "expire-batches": {"task": EXPIRE_BATCHES, "schedule": 60.0,
                               "options": {"queue": settings.maintenance_queue}},
            # Firing is a compare-and-set per slot: a late or duplicate tick fires nothing twice.
            "fire-schedules": {"task": FIRE_SCHEDULES, "schedule": 30.0,
                               "options": {"queue": settings.maintenance_queue}},
        },
    )
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
