"""`run_job`: claim, run through the engine, store result and status in one commit."""

from __future__ import annotations

import logging
import time
import uuid

from celery import shared_task
from sqlalchemy.exc import OperationalError

from app.errors import error_body
from app.jobs import services
from app.jobs.dispatch import RUN_JOB
from app.webhooks.dispatch import send_deliveries
from app.webhooks.services import job_event
from workers import execution
from workers.base import PoolqTask
from workers.engines import engine_registry
from workers.metrics import JOB_SECONDS, JOBS_RUN

log = logging.getLogger(__name__)


@shared_task(bind=True, base=PoolqTask, name=RUN_JOB, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=8)
def run_job(self: PoolqTask, job_id: str, model: str | None = None, task: str | None = None) -> None:
    # `model` and `task` ride along only so Flower can show them; the row is the truth.
    key = uuid.UUID(job_id)
    completed: list[uuid.UUID] = []
    with self.unit_of_work() as session:
        claimed = services.claim(session, key, worker=self.request.hostname or "worker")
        # Only the first claim starts the job; a reclaim after a lost worker is not news.
        started = (job_event(session, key, "started")
                   if claimed and claimed.has_webhook and claimed.attempt == 1 else [])
    send_deliveries(self.poolq.celery, started)
    if claimed is None:
        log.info("job %s is already finished; redelivery ignored", job_id)
        return
    started_at, outcome = time.perf_counter(), "succeeded"
    try:
        engine = engine_registry(self.poolq.settings).get(claimed.model)
        body, prompt_tokens = execution.run(engine, claimed, lambda: self.job_cancelled(key))
    except execution.JobCancelled:
        outcome = "cancelled"
        log.info("job %s was cancelled while running; stopped", job_id)
    except ValueError as exc:  # PoolingInputError is a ValueError: the client's input, a 400
        outcome = "failed"
        error = error_body(str(exc), "BadRequestError", getattr(exc, "parameter", None), 400)["error"]
        completed = _finish(self, claimed, lambda session: services.fail(session, claimed, error))
    except Exception as exc:
        log.exception("job %s failed in the engine", job_id)
        outcome = "failed"
        error = error_body(f"The engine failed on this job: {type(exc).__name__}", "InternalServerError", None, 500)
        completed = _finish(self, claimed, lambda session: services.fail(session, claimed, error["error"]))
    else:
        completed = _finish(self, claimed, lambda session: services.complete(session, claimed, body, prompt_tokens))
    JOBS_RUN.labels(claimed.model, claimed.task, outcome).inc()
    JOB_SECONDS.labels(claimed.model).observe(time.perf_counter() - started_at)
    # After the commit: the callbacks, then wake a synchronous request waiting for this job.
    send_deliveries(self.poolq.celery, completed)
    self.poolq.events.publish(job_id)


def _finish(task: PoolqTask, claimed: services.ClaimedJob, write) -> list[uuid.UUID]:
    """The job's final write and, in the same transaction, its `completed` webhook if it has one."""
    with task.unit_of_work() as session:
        if not write(session):
            log.info("job %s finished elsewhere (attempt %d lost the race)", claimed.id, claimed.attempt)
            return []
        return job_event(session, claimed.id, "completed") if claimed.has_webhook else []
