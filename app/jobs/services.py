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

from sqlalchemy import Connection, Text, bindparam, cast, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from app import jsontext
from app.db.base import as_utc, utcnow
from app.errors import bad_request, not_found
from app.jobs.options import JobOptions
from app.jobs.records import FINISHED_STATUSES, Job, JobResult
from app.pooling.requests import TASK_ENDPOINTS, parse
from app.served import ServedModel, ServedModels


# Per-job writes go through the table, not the ORM class: the ORM's unit of
# work and bulk-update paths cost more than the statements themselves, once
# when a job is accepted and twice in the worker. No session holds these rows.
JOBS_TABLE = Job.__table__
_JOB_COLUMNS = [(attr.key, attr.columns[0]) for attr in Job.__mapper__.column_attrs]
# Built once: `insert(...).values(row)` rebuilt the statement on every call, which cost
# more CPU than the round trip; executed with a parameter dict it is compiled once too.
_INSERT_JOB = insert(JOBS_TABLE)
# Many rows: with RETURNING, SQLAlchemy's "insertmanyvalues" sends them as ONE multi-row INSERT
# (one statement, one commit in autocommit) where a plain executemany sends one per row.
_INSERT_JOBS = insert(JOBS_TABLE).returning(JOBS_TABLE.c.id)


def _insert_from_arrays(table) -> tuple[str, frozenset[str]]:
    """On Postgres: an INSERT of any number of rows with one fixed text, each column's values an
    array in psycopg's binary format. The multi-row INSERT's text is new for each number of rows
    and long (~20 placeholders a row), past psycopg's cache of parsed queries, and psycopg
    parsed it (a regular expression over the whole text, in Python) for every group: a group of
    8 took 0.63 ms of CPU, 0.26 as arrays, of 16 1.07 and 0.29 (~0.06 ms of the API's ~1.1 a job
    on the sync route). JSON goes as text, cast by the server as before. Returns the statement
    and the keys of its JSON columns."""
    dialect = postgresql.dialect()
    names, arrays, values, json_keys = [], [], [], set()
    for column in table.columns:
        sql_type = column.type.compile(dialect=dialect)
        json = sql_type in ("JSON", "JSONB")
        if json:
            json_keys.add(column.key)
        element = "text" if json or sql_type.startswith("VARCHAR") else sql_type.lower()
        names.append(f'"{column.name}"')
        arrays.append(f"%({column.key})b::{element}[]")
        values.append(f'r."{column.name}"' + (f"::{sql_type.lower()}" if json else ""))
    return (f"INSERT INTO {table.name} ({', '.join(names)})\n"
            f"SELECT {', '.join(values)}\n"
            f"FROM unnest({', '.join(arrays)}) AS r({', '.join(names)})"), frozenset(json_keys)


_INSERT_JOBS_FROM_ARRAYS, _JSON_KEYS = _insert_from_arrays(JOBS_TABLE)


def parse_job_request(body: Any, served: ServedModels, max_items: int,
                      header_request_id: str | None = None) -> tuple[ServedModel, dict[str, Any]]:
    """A native job: the body of the vLLM route its task maps to, plus `task`."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    task = body.get("task")
    if not isinstance(task, str) or task not in TASK_ENDPOINTS:
        raise bad_request(f"Unsupported task: {task!r} Supported tasks: {tuple(TASK_ENDPOINTS)}", param="task")
    model, request = parse(TASK_ENDPOINTS[task], body, served, max_items, header_request_id, task=task)
    if task not in model.card.tasks:
        raise bad_request(f"Unsupported task: {task!r} Supported tasks: {model.card.tasks}", param="task")
    return model, request


def count_inputs(request: dict[str, Any]) -> int:
    if "input" in request:
        return len(request["input"])
    if "messages" in request:
        return 1
    if "documents" in request:
        return len(request["documents"])
    return max(len(request["data_1"]), len(request["data_2"]))


@dataclass(slots=True)
class QueuedJob:
    """A job as it is accepted: the row about to be written, and what the answer to its client
    reads of it. A plain record, where an ORM `Job` (no session ever holds it) cost ~60 us of the
    API's CPU per job to build and read through its instrumented attributes, this ~6-11. Its
    fields are the jobs table's columns (tests/unit/test_queued_job.py keeps them so)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    task: str
    model: str
    request: dict[str, Any]
    num_inputs: int
    meta: dict[str, str] | None
    webhook_url: str | None
    webhook_events: list[str] | None
    idempotency_key: str | None
    request_hash: str | None
    created_at: dt.datetime
    enqueued_at: dt.datetime | None
    status: str = "queued"
    attempts: int = 0
    error: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    worker: str | None = None
    lease_expires_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


def new_job(model: ServedModel, request: dict[str, Any], tenant_id: uuid.UUID,
            options: JobOptions | None = None, idempotency: tuple[str, str] | None = None,
            job_id: uuid.UUID | None = None) -> QueuedJob:
    """The row of a queued job, not yet written. `idempotency` is (Idempotency-Key, request hash)
    when the client sent the header."""
    options = options or JobOptions()
    now = utcnow()
    return QueuedJob(
        id=job_id or uuid.uuid4(),
        tenant_id=tenant_id,
        task=request["task"],
        model=model.name,
        request=request,
        num_inputs=count_inputs(request),
        meta=options.metadata,
        webhook_url=options.webhook,
        webhook_events=options.webhook_events_filter,
        idempotency_key=idempotency[0] if idempotency else None,
        request_hash=idempotency[1] if idempotency else None,
        created_at=now,
        # Optimistic: the send follows the commit; `mark_unsent` undoes this
        # when the broker refuses, and the sweeper covers a crash in between.
        enqueued_at=now,
    )


def insert_job(connection: Connection | Session, job: QueuedJob) -> None:
    """A plain INSERT rather than session.add + flush: the unit of work costs more than the
    statement, on every accepted job."""
    connection.execute(_INSERT_JOB, _row(job))


def insert_jobs(connection: Connection, jobs: list[QueuedJob]) -> None:
    """Many queued jobs in one statement (app.jobs.intake's groups)."""
    if connection.dialect.driver != "psycopg":
        connection.execute(_INSERT_JOBS, [_row(job) for job in jobs]).all()
        return
    rows = [_row(job) for job in jobs]
    # JSON as SQLAlchemy's JSON type writes it, None included ('null', not SQL NULL).
    connection.exec_driver_sql(_INSERT_JOBS_FROM_ARRAYS, {
        key: [jsontext.dumps(row[key]) for row in rows] if key in _JSON_KEYS else [row[key] for row in rows]
        for key in rows[0]})


def _row(job: QueuedJob) -> dict[str, Any]:
    return {column.key: getattr(job, attr) for attr, column in _JOB_COLUMNS}


def create_job(session: Session, model: ServedModel, request: dict[str, Any], tenant_id: uuid.UUID,
               options: JobOptions | None = None, idempotency: tuple[str, str] | None = None,
               job_id: uuid.UUID | None = None) -> QueuedJob:
    """A queued job, inserted in the caller's transaction."""
    job = new_job(model, request, tenant_id, options, idempotency, job_id)
    insert_job(session, job)
    return job


def get_job(session: Session, job_id: str, tenant_id: uuid.UUID) -> Job:
    """The tenant's job; another tenant's is as absent as a missing one (404, not 403)."""
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        raise not_found(f"Job {job_id!r} does not exist.") from None
    job = session.get(Job, key)
    if job is None or job.tenant_id != tenant_id:
        raise not_found(f"Job {job_id!r} does not exist.")
    return job


def find_idempotent(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def kept_job_ids(session: Session, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these jobs' rows exist."""
    return set(session.scalars(select(JOBS_TABLE.c.id).where(JOBS_TABLE.c.id.in_(job_ids))))


def job_finished(connection: Connection | Session, job_id: uuid.UUID) -> bool:
    status = connection.scalar(select(Job.status).where(Job.id == job_id))
    return status is None or status in FINISHED_STATUSES


def job_result_body(session: Session, job: Job) -> dict[str, Any] | None:
    if job.status != "succeeded":
        return None
    return session.scalar(select(JobResult.body).where(JobResult.job_id == job.id))


def job_result_json(session: Session, job: Job) -> str | None:
    """The stored result as the worker wrote it, JSON text never parsed here: a
    bulk result is megabytes, and parsing it only to serialize it again costs
    the API more than reading it."""
    if job.status != "succeeded":
        return None
    return session.scalar(select(cast(JobResult.body, Text)).where(JobResult.job_id == job.id))


_FINISHED_OUTCOME = (select(JOBS_TABLE.c.status, JOBS_TABLE.c.error, cast(JobResult.__table__.c.body, Text))
                     .outerjoin(JobResult.__table__, JobResult.__table__.c.job_id == JOBS_TABLE.c.id)
                     .where(JOBS_TABLE.c.id == bindparam("job_id"), JOBS_TABLE.c.tenant_id == bindparam("tenant_id")))


def finished_outcome(connection: Connection | Session, job_id: uuid.UUID,
                     tenant_id: uuid.UUID) -> tuple[str, dict | None, str | None]:
    """A job's status, error and stored result JSON (None unless it succeeded), in one query of
    plain columns: what a synchronous route answers with once its job is done."""
    row = connection.execute(_FINISHED_OUTCOME, {"job_id": job_id, "tenant_id": tenant_id}).one_or_none()
    if row is None:
        raise not_found(f"Job {str(job_id)!r} does not exist.")
    return row[0], row[1], row[2]


def job_resource_json(job: Job | QueuedJob, result_json: str | None, dumps) -> str:
    """`job_resource` serialized with `dumps`, the stored result spliced in verbatim."""
    resource = job_resource(job, None)
    del resource["result"]
    return f'{dumps(resource)[:-1]}, "result": {result_json or "null"}}}'


def job_resource(job: Job | QueuedJob, result: dict[str, Any] | None) -> dict[str, Any]:
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
        "metadata": job.meta or {},
        "webhook": job.webhook_url,
        "webhook_events_filter": job.webhook_events,
        "result": result,
        "error": job.error,
    }


def _epoch(value: dt.datetime | None) -> float | None:
    value = as_utc(value)
    return None if value is None else round(value.timestamp(), 3)


def mark_unsent(session: Session, job_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(enqueued_at=None))


def unsent_jobs(session: Session, requeue_after_s: int, drained_models: set[str] = frozenset(),
                limit: int = 500) -> list[uuid.UUID]:
    """Queued jobs with no message known to be out: the send was refused (enqueued_at NULL),
    or the API died between the commit and the send (a job still queued long after it was
    sent, of one of `drained_models`, whose queues hold no message: its own cannot be waiting).

    Running jobs are not here: they are held by leases, and a worker takes
    over a job whose lease lapsed (app/jobs/claims.py).
    """
    stale_send = utcnow() - dt.timedelta(seconds=requeue_after_s)
    aged = (Job.enqueued_at < stale_send) & Job.model.in_(list(drained_models))
    query = (select(Job.id)
             .where(Job.status == "queued", Job.enqueued_at.is_(None) | aged)
             .order_by(Job.created_at).limit(limit))
    return list(session.scalars(query))


def mark_sent(session: Session, job_ids: list[uuid.UUID]) -> list[Job]:
    """Mark queued jobs as sent now; the caller sends after commit."""
    if not job_ids:
        return []
    session.execute(update(Job).where(Job.id.in_(job_ids), Job.status == "queued").values(enqueued_at=utcnow()))
    return list(session.scalars(select(Job).where(Job.id.in_(job_ids), Job.status == "queued")))
