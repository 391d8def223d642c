"""Periodic upkeep, fired by Celery beat."""

from __future__ import annotations

import json
import logging
import uuid

from celery import shared_task

from app.celery import EXPIRE_JOBS, SWEEP_JOBS
from app.batches.retention import delete_orphan_files, expire_files, expire_finished_batches
from app.broker import is_redis
from app.jobs import dispatch, lifecycle, services
from app.jobs.dispatch import RUN_JOB
from app.task_messages import task_and_args
from workers.base import PoolqTask

log = logging.getLogger(__name__)


@shared_task(bind=True, base=PoolqTask, name=SWEEP_JOBS, ignore_result=True)
def sweep_jobs(self: PoolqTask) -> int:
    """Re-send queued jobs whose message was never sent (running ones are covered by leases).

    A job whose message may still be waiting in its queue is never re-sent:
    an aged queued job counts as lost only while its model's queue is empty.
    """
    settings = self.poolq.settings
    drained = _models_with_empty_queues(self.poolq.celery, settings)
    # Read after the queue lengths: a message that had left an empty queue is then either in
    # a worker's unacked record or acked, and a worker acks a job's message only after the
    # claim that takes the job out of `queued` has committed, so the query below skips it.
    delivered = _jobs_delivered_unacked(self.poolq.celery, settings) if drained else set()
    with self.unit_of_work() as session:
        ids = [i for i in services.unsent_jobs(session, settings.requeue_after_s, drained) if i not in delivered]
        jobs = services.mark_sent(session, ids)
    unsent = [job.id for job in jobs if not dispatch.send_job(self.poolq.celery, job)]
    if unsent:
        with self.unit_of_work() as session:
            for job_id in unsent:
                services.mark_unsent(session, job_id)
    if jobs:
        log.info("re-sent %d job(s), %d still unsent", len(jobs) - len(unsent), len(unsent))
    return len(jobs) - len(unsent)


def _models_with_empty_queues(celery, settings) -> set[str]:
    """This worker's models whose broker queue holds no undelivered message (Redis: the list's
    length is 0). Where that cannot be read, none: an aged job is then re-sent only if its
    send is known to have failed."""
    models = [spec.name for spec in settings.models]
    if not is_redis(settings.broker_url):
        return set()
    try:
        with celery.connection_for_write() as conn:
            client = conn.default_channel.client
            pipe = client.pipeline(transaction=False)
            for model in models:
                pipe.llen(settings.queue_for(model))
            return {model for model, n in zip(models, pipe.execute()) if not n}
    except Exception:  # noqa: BLE001 - the broker is unreachable: re-send nothing on a guess
        log.warning("could not read the broker's queue lengths", exc_info=True)
        return set()


def _jobs_delivered_unacked(celery, settings) -> set[uuid.UUID]:
    """Jobs whose `run_job` message a worker has taken off its queue and not acked yet (kombu's
    unacked record on Redis). Such a job is still `queued` until the worker's admission claims
    it, a moment later, or a group of them (a batched read takes up to 64 at once): its queue is
    empty, but its message is not lost. Where that cannot be read, none are known (each worker
    claims what it took within moments; a sweep then re-sends at most a duplicate, which the
    claim turns away)."""
    try:
        with celery.connection_for_write() as conn:
            channel = conn.default_channel
            # kombu prefixes the keys of the commands it sends itself; HVALS is not one of them.
            prefix = getattr(channel, "global_keyprefix", "") or ""
            records = channel.client.hvals(prefix + channel.unacked_key)
    except Exception:  # noqa: BLE001 - the broker is unreachable; the queue lengths said as much
        log.warning("could not read the broker's unacked messages", exc_info=True)
        return set()
    held = set()
    for record in records:
        try:
            task = task_and_args(json.loads(record)[0])  # kombu's record: [message, exchange, routing key]
            if task is not None and task[0] == RUN_JOB:
                held.add(uuid.UUID(str(task[1][0])))
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not a message of ours; kombu writes JSON records
    return held


@shared_task(bind=True, base=PoolqTask, name=EXPIRE_JOBS, ignore_result=True)
def expire_jobs(self: PoolqTask) -> int:
    """Delete finished jobs and batches (with their results) past POOLQ_JOB_RETENTION_S, and
    uploaded files past their expiry, in bounded batches."""
    total = 0
    retention = self.poolq.settings.job_retention_s
    while True:
        with self.unit_of_work() as session:
            deleted = lifecycle.expire_jobs(session, retention)
        total += deleted
        if deleted < 1000:
            break
    while True:
        with self.unit_of_work() as session:
            deleted = expire_finished_batches(session, retention)
        total += deleted
        if deleted < 200:
            break
    files = 0
    while True:
        with self.unit_of_work() as session:
            deleted = expire_files(session) + delete_orphan_files(session)
        files += deleted
        if deleted < 200:
            break
    if total or files:
        log.info("expired %d finished job(s) and batch(es), %d uploaded file(s)", total, files)
    return total + files
