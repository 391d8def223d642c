"""Job lifecycle: submit, read, claim, finish. Functions flush, callers commit.

State machine: queued -> running -> succeeded | failed | cancelled. Every
transition is a compare-and-set on the row, so a redelivered broker message
or a second worker can never overwrite a finished job.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import as_utc, utcnow
from app.errors import APIError, bad_request, not_found, validation_error
from app.jobs.records import Job, JobResult
from app.jobs.schemas import JOB_REQUESTS
from app.pooling.protocol import as_prompt_list, prompt_count, random_request_id
from app.served import ServedModel, ServedModels


def parse_job_request(body: Any, served: ServedModels, max_items: int) -> tuple[ServedModel, dict[str, Any]]:
    """Validate a submission fully before anything is written."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    task = body.get("task")
    if task not in JOB_REQUESTS:
        raise bad_request(f"Unsupported task: {task!r} Supported tasks: {tuple(JOB_REQUESTS)}", param="task")
    try:
        request = JOB_REQUESTS[task].model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    model = served.resolve(request.model)
    if task not in model.card.tasks:
        raise bad_request(
            f"Unsupported task: {task!r} Supported tasks: {model.card.tasks}", param="task"
        )
    count = prompt_count(request.input)
    if count == 0:
        raise bad_request("You must pass at least one prompt", param="input")
    if count > max_items:
        raise APIError(413, f"Too many inputs: {count} (at most {max_items} per request).", param="input")
    limit = request.truncate_prompt_tokens
    if limit is not None and limit > model.card.max_model_len:
        raise bad_request(
            "truncate_prompt_tokens value is greater than max_model_len. Please request a smaller truncation size.",
            param="truncate_prompt_tokens",
        )
    stored = request.model_dump(exclude_unset=False)
    stored = {k: v for k, v in stored.items() if k in type(request).model_fields}
    stored["model"] = model.name
    stored["input"] = as_prompt_list(request.input)
    stored["request_id"] = request.request_id or random_request_id()
    return model, stored


def create_job(session: Session, model: ServedModel, request: dict[str, Any]) -> Job:
    job = Job(
        id=uuid.uuid4(),
        task=request["task"],
        model=model.name,
        status="queued",
        request=request,
        num_inputs=len(request["input"]),
        created_at=utcnow(),
        # Optimistic: the send follows the commit; `mark_unsent` undoes this
        # when the broker refuses, and the sweeper covers a crash in between.
        enqueued_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str, with_result: bool = True) -> Job:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        raise not_found(f"Job {job_id!r} does not exist.") from None
    job = session.get(Job, key)
    if job is None:
        raise not_found(f"Job {job_id!r} does not exist.")
    return job


def job_result_body(session: Session, job: Job) -> dict[str, Any] | None:
    if job.status != "succeeded":
        return None
    return session.scalar(select(JobResult.body).where(JobResult.job_id == job.id))


def job_resource(job: Job, result: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "object": "job",
        "task": job.task,
        "model": job.model,
        "status": job.status,
        "num_inputs": job.num_inputs,
        "attempts": job.attempts,
        "created_at": _epoch(job.created_at),
        "started_at": _epoch(job.started_at),
        "finished_at": _epoch(job.finished_at),
        "usage": None if job.prompt_tokens is None else {
            "prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens},
        "result": result,
        "error": job.error,
    }


def _epoch(value: dt.datetime | None) -> float | None:
    value = as_utc(value)
    return None if value is None else round(value.timestamp(), 3)


def mark_unsent(session: Session, job_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(enqueued_at=None))


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    task: str
    model: str
    request: dict[str, Any]
    attempt: int


def claim(session: Session, job_id: uuid.UUID, worker: str) -> ClaimedJob | None:
    """queued -> running. A running job is claimed again: its worker died and
    the broker redelivered; the higher attempt number wins the final write."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(status="running", attempts=Job.attempts + 1, started_at=utcnow(), worker=worker)
        .returning(Job.task, Job.model, Job.request, Job.attempts)
    ).one_or_none()
    if row is None:
        return None  # finished, cancelled or deleted: a redelivery, nothing to do
    return ClaimedJob(job_id, row.task, row.model, row.request, row.attempts)


def complete(session: Session, claimed: ClaimedJob, body: dict[str, Any], prompt_tokens: int) -> bool:
    """running -> succeeded with the result, in the caller's one transaction."""
    finished = _finish(session, claimed, "succeeded", prompt_tokens=prompt_tokens)
    if finished:
        session.add(JobResult(job_id=claimed.id, body=body, created_at=utcnow()))
        session.flush()
    return finished


def fail(session: Session, claimed: ClaimedJob, error: dict[str, Any]) -> bool:
    return _finish(session, claimed, "failed", error=error)


def _finish(session: Session, claimed: ClaimedJob, status: str, **values: Any) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == claimed.id, Job.status == "running", Job.attempts == claimed.attempt)
        .values(status=status, finished_at=utcnow(), **values)
    )
    return result.rowcount == 1


def stale_jobs(session: Session, requeue_after_s: int, running_timeout_s: int, limit: int = 500) -> list[uuid.UUID]:
    """Jobs whose broker message is missing or presumed lost.

    - queued and never sent (the broker refused at submit time);
    - queued and sent long ago (a crash between commit and send);
    - running for longer than the timeout (the worker vanished and the
      broker did not redeliver).
    """
    now = utcnow()
    stale_send = now - dt.timedelta(seconds=requeue_after_s)
    stale_run = now - dt.timedelta(seconds=running_timeout_s)
    query = (
        select(Job.id)
        .where(
            ((Job.status == "queued") & (Job.enqueued_at.is_(None) | (Job.enqueued_at < stale_send)))
            | ((Job.status == "running") & (Job.started_at < stale_run))
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def requeue(session: Session, job_ids: list[uuid.UUID]) -> list[Job]:
    """Put jobs back to `queued`, marked as sent now; the caller sends after commit.

    A worker still busy with one of them loses the race: its final write
    needs `running` and its own attempt number.
    """
    if not job_ids:
        return []
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status.in_(("queued", "running")))
        .values(status="queued", enqueued_at=utcnow())
    )
    return list(session.scalars(select(Job).where(Job.id.in_(job_ids), Job.status == "queued")))
