"""`run_job(job_id)`: the message a submitted job sends. The worker's scheduler runs it.

The task's Strategy hands each message to the scheduler (workers/scheduler/
handoff.py), which claims, batches, stores and acks jobs in groups; no pool
thread ever runs this body. `model` and `task` ride along only so Flower
shows them; the row is the truth.
"""

from __future__ import annotations

from celery import shared_task

from app.jobs.dispatch import RUN_JOB


@shared_task(name=RUN_JOB, acks_late=True, ignore_result=True,
             Strategy="workers.scheduler.handoff:job_strategy")
def run_job(job_id: str, model: str | None = None, task: str | None = None) -> None:
    raise RuntimeError("run_job is run by the worker's scheduler, never by a pool thread")
