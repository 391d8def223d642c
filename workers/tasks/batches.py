"""Batch tasks: validate, run a chunk, finalize; the sweeper and the expiry behind them.

Rows are the truth; a message only says "look at this row now". Every step
is a compare-and-set, so duplicate or stale messages do nothing.
"""

from __future__ import annotations

import logging

from celery import shared_task
from sqlalchemy.exc import OperationalError

from app.batches import closing, events, progress
from app.batches.dispatch import (EXPIRE_BATCHES, FINALIZE_BATCH, RUN_BATCH_CHUNK, SWEEP_BATCHES, VALIDATE_BATCH,
                                  send_chunk, send_finalize, send_validate)
from app.webhooks.dispatch import send_deliveries
from workers.base import PoolqTask

log = logging.getLogger(__name__)

_DURABLE = dict(bind=True, base=PoolqTask, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
                autoretry_for=(OperationalError,), retry_backoff=True, max_retries=8)


def _send_chunks(task: PoolqTask, keys: list[progress.ChunkKey]) -> None:
    unsent = [key for key in keys if not send_chunk(task.poolq.celery, *key)]
    if unsent:
        with task.unit_of_work() as session:
            progress.mark_unsent(session, unsent)


@shared_task(name=VALIDATE_BATCH, **_DURABLE)
def validate_batch(self: PoolqTask, batch_id: str) -> None:
    """Cut the input into chunks, a transaction per step: each step's chunks are sent after its
    commit, so they run while the rest is parsed. A run that dies part-way is run again (acks_late;
    the sweeper) and stores only what the first did not."""
    s = self.poolq.settings
    with self.unit_of_work() as session:
        source = progress.validation_source(session, batch_id)
    if source is None:
        return
    for step in progress.cut(source, self.poolq.served, s.max_items_per_request, s.batch_chunk_lines):
        with self.unit_of_work() as session:
            validated = progress.store_step(session, batch_id, step, s.batch_parallel_chunks)
            deliveries = events.final_event(session, batch_id) if validated.failed else []
        if validated.failed:
            self.poolq.events.publish(batch_id)  # wakes a `Prefer: wait` read of the batch
        send_deliveries(self.poolq.celery, deliveries)
        _send_chunks(self, validated.send)
        if validated.finalize:
            send_finalize(self.poolq.celery, batch_id)
        if validated.stop:
            return


@shared_task(name=RUN_BATCH_CHUNK, acks_late=True, ignore_result=True,
             Strategy="workers.scheduler.handoff:chunk_strategy")
def run_batch_chunk(batch_id: str, index: int, model: str | None = None) -> None:
    """Run by the worker's scheduler in the bulk lane (workers/scheduler/), never by a pool thread."""
    raise RuntimeError("run_batch_chunk is run by the worker's scheduler, never by a pool thread")


@shared_task(name=FINALIZE_BATCH, **_DURABLE)
def finalize_batch(self: PoolqTask, batch_id: str) -> None:
    with self.unit_of_work() as session:
        status = closing.start_closing(session, batch_id)
    if status is None:
        return
    with self.unit_of_work() as session:
        closed = closing.close(session, batch_id, status)
        # Only the closer that won: a batch ends, and is announced, once.
        deliveries = events.final_event(session, batch_id) if closed else []
    if closed:
        self.poolq.events.publish(batch_id)  # wakes a `Prefer: wait` read of the batch
    send_deliveries(self.poolq.celery, deliveries)
    log.info("batch %s %s", batch_id, status if closed else "was closed by another finalize")


@shared_task(bind=True, base=PoolqTask, name=SWEEP_BATCHES, ignore_result=True)
def sweep_batches(self: PoolqTask) -> int:
    """Re-send what a lost message or a dead worker left behind."""
    s = self.poolq.settings
    with self.unit_of_work() as session:
        validations, chunks, pumps, finals = closing.overdue(session, s.requeue_after_s)
        progress.lock_batches(session, [key[0] for key in chunks] + pumps)  # one sorted lock order
        closing.resend_chunks(session, chunks)
        for batch_id in pumps:
            chunks = chunks + progress.pump(session, batch_id, s.batch_parallel_chunks)
    for batch_id in validations:
        send_validate(self.poolq.celery, batch_id)
    _send_chunks(self, chunks)
    for batch_id in finals:
        send_finalize(self.poolq.celery, batch_id)
    count = len(validations) + len(chunks) + len(finals)
    if count:
        log.info("batch sweep: %d validation(s), %d chunk(s), %d finalize(s) sent", len(validations),
                 len(chunks), len(finals))
    return count


@shared_task(bind=True, base=PoolqTask, name=EXPIRE_BATCHES, ignore_result=True)
def expire_batches(self: PoolqTask) -> int:
    """Batches past their completion window end as `expired`, keeping the lines they finished."""
    with self.unit_of_work() as session:
        ids = closing.expired_batches(session)
    expired = 0
    for batch_id in ids:
        with self.unit_of_work() as session:
            won = closing.expire(session, batch_id)
            deliveries = events.final_event(session, batch_id) if won else []
        if won:
            self.poolq.events.publish(batch_id)
        send_deliveries(self.poolq.celery, deliveries)
        expired += won
    if expired:
        log.info("expired %d batch(es)", expired)
    return expired
