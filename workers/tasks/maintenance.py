"""Periodic upkeep, fired by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

from app.celery import SWEEP_JOBS
from app.jobs import dispatch, services
from workers.base import PoolqTask

log = logging.getLogger(__name__)


@shared_task(bind=True, base=PoolqTask, name=SWEEP_JOBS, ignore_result=True)
def sweep_jobs(self: PoolqTask) -> int:
    """Re-send jobs whose message was never sent or was lost with a worker."""
    settings = self.poolq.settings
    with self.unit_of_work() as session:
        ids = services.stale_jobs(session, settings.requeue_after_s, settings.running_timeout_s)
        jobs = services.requeue(session, ids)
    unsent = [job.id for job in jobs if not dispatch.send_job(self.poolq.celery, job)]
    if unsent:
        with self.unit_of_work() as session:
            for job_id in unsent:
                services.mark_unsent(session, job_id)
    if jobs:
        log.info("re-sent %d job(s), %d still unsent", len(jobs) - len(unsent), len(unsent))
    return len(jobs) - len(unsent)
