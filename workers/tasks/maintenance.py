"""Periodic upkeep, fired by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

from app.celery import EXPIRE_JOBS, SWEEP_JOBS
from app.batches.retention import expire_files, expire_finished_batches
from app.jobs import dispatch, lifecycle, services
from workers.base import PoolqTask

log = logging.getLogger(__name__)


@shared_task(bind=True, base=PoolqTask, name=SWEEP_JOBS, ignore_result=True)
def sweep_jobs(self: PoolqTask) -> int:
    """Re-send queued jobs whose message was never sent (running ones are covered by leases)."""
    settings = self.poolq.settings
    with self.unit_of_work() as session:
        ids = services.unsent_jobs(session, settings.requeue_after_s)
        jobs = services.mark_sent(session, ids)
    unsent = [job.id for job in jobs if not dispatch.send_job(self.poolq.celery, job)]
    if unsent:
        with self.unit_of_work() as session:
            for job_id in unsent:
                services.mark_unsent(session, job_id)
    if jobs:
        log.info("re-sent %d job(s), %d still unsent", len(jobs) - len(unsent), len(unsent))
    return len(jobs) - len(unsent)


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
            deleted = expire_files(session)
        files += deleted
        if deleted < 200:
            break
    if total or files:
        log.info("expired %d finished job(s) and batch(es), %d uploaded file(s)", total, files)
    return total + files
