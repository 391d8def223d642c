"""Periodic upkeep, fired by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

from app.celery import EXPIRE_JOBS, SWEEP_JOBS
from app.batches.retention import delete_orphan_files, expire_files, expire_finished_batches
from app.broker import is_redis
from app.jobs import dispatch, lifecycle, services
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
    with self.unit_of_work() as session:
        ids = services.unsent_jobs(session, settings.requeue_after_s, drained)
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
