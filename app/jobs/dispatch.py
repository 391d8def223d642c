"""Sending jobs to the workers. Always after the job's row is committed."""

from __future__ import annotations

import logging

from celery import Celery

from app.jobs.records import Job
from app.jobs.services import QueuedJob
from app.task_messages import publisher_for, send_task

log = logging.getLogger(__name__)

RUN_JOB = "poolq.run_job"


def send_job(celery: Celery, job: Job | QueuedJob) -> bool:
    """Publish `run_job(job_id)`; False when the broker cannot take it.

    The job id and model travel as arguments so Flower shows them. A refused
    send is not an error for the client: the job is committed, and the
    sweeper sends it once the broker is back.
    """
    args, kwargs = [str(job.id)], {"model": job.model, "task": job.task}
    queue = celery.poolq.settings.queue_for(job.model)
    try:
        send_task(celery, RUN_JOB, queue, args, kwargs)
        return True
    except Exception:  # kombu and redis raise OperationalError, ConnectionError and friends: "not sent"
        log.warning("broker refused job %s; the sweeper will resend it", job.id, exc_info=True)
        return False


def send_jobs(celery: Celery, jobs: list[QueuedJob]) -> list[bool]:
    """`send_job` for many (app.jobs.intake's groups): whether each was sent. On a Redis broker
    they go in one round trip, applied whole, so either all are sent or none is."""
    publisher = publisher_for(celery)
    if publisher is None or len(jobs) == 1:
        return [send_job(celery, job) for job in jobs]
    queue_for = celery.poolq.settings.queue_for
    try:
        publisher.send_many(RUN_JOB, [(queue_for(job.model), [str(job.id)], {"model": job.model, "task": job.task})
                                      for job in jobs])
        return [True] * len(jobs)
    except Exception:  # redis's ConnectionError and TimeoutError: "not sent"
        log.warning("broker refused %d jobs; the sweeper will resend them", len(jobs), exc_info=True)
        return [False] * len(jobs)
