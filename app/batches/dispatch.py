"""Sending batch work to the workers, always after the commit that it acts on.

Chunks go to their model's bulk queue; validation and finalization, which
need no engine, go to the maintenance queue. A refused send is never an
error for the caller: the rows say what is due, and the sweeper sends it.
"""

from __future__ import annotations

import logging

from celery import Celery

from app.task_messages import send_task

log = logging.getLogger(__name__)

VALIDATE_BATCH = "poolq.validate_batch"
RUN_BATCH_CHUNK = "poolq.run_batch_chunk"
FINALIZE_BATCH = "poolq.finalize_batch"
SWEEP_BATCHES = "poolq.sweep_batches"
EXPIRE_BATCHES = "poolq.expire_batches"


def _send(celery: Celery, name: str, args: list, queue: str, **kwargs) -> bool:
    try:
        send_task(celery, name, queue, args, kwargs)  # ~0.2 ms of CPU where Celery's send_task took ~1.1
        return True
    except Exception:  # kombu's OperationalError, redis's ConnectionError and friends: all mean "not sent"
        log.warning("broker refused %s%s; the sweeper will resend it", name, args, exc_info=True)
        return False


def send_validate(celery: Celery, batch_id: str) -> bool:
    return _send(celery, VALIDATE_BATCH, [batch_id], celery.poolq.settings.maintenance_queue)


def send_finalize(celery: Celery, batch_id: str) -> bool:
    return _send(celery, FINALIZE_BATCH, [batch_id], celery.poolq.settings.maintenance_queue)


def send_chunk(celery: Celery, batch_id: str, index: int, model: str) -> bool:
    # `model` rides along so Flower shows it; the chunk row is the truth.
    return _send(celery, RUN_BATCH_CHUNK, [batch_id, index], celery.poolq.settings.bulk_queue_for(model),
                 model=model)
