"""Cancel, list, delete and expire jobs. Functions flush; callers commit."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db.base import as_utc, utcnow
from app.db.paging import newest_first, page_limit
from app.errors import APIError, bad_request
from app.jobs.records import FINISHED_STATUSES, JOB_STATUSES, Job
from app.jobs.services import get_job



@dataclass(frozen=True)
class _Anchor:
    """A page's end, decoded from the cursor the previous page returned."""

    created_at: dt.datetime
    id: uuid.UUID


def cancel_job(session: Session, job_id: str, tenant_id: uuid.UUID) -> Job:
    """queued or running -> cancelled, at once.

    A running job's worker notices at its next chunk boundary and stops; its
    final write needs `running`, so a cancelled job's results are never
    written afterwards.
    """
    job = get_job(session, job_id, tenant_id)
    changed = session.execute(
        update(Job).where(Job.id == job.id, Job.status.in_(("queued", "running")))
        .values(status="cancelled", finished_at=utcnow())
    ).rowcount
    session.refresh(job)
    if not changed:
        raise APIError(409, f"Job {job_id} is already {job.status}; only queued or running jobs can be cancelled.",
                       "ConflictError")
    return job


def delete_job(session: Session, job_id: str, tenant_id: uuid.UUID) -> None:
    job = get_job(session, job_id, tenant_id)
    if job.status not in FINISHED_STATUSES:
        raise APIError(409, f"Job {job_id} is {job.status}; cancel it before deleting it.", "ConflictError")
    # job_results go with it (ON DELETE CASCADE).
    session.execute(delete(Job).where(Job.id == job.id))


def expire_jobs(session: Session, retention_s: int, batch: int = 1000) -> int:
    """Delete finished jobs older than the retention, a batch at a time."""
    if retention_s <= 0:
        return 0
    cutoff = utcnow() - dt.timedelta(seconds=retention_s)
    ids = list(session.scalars(select(Job.id).where(Job.status.in_(FINISHED_STATUSES), Job.finished_at < cutoff)
                               .limit(batch)))
    if ids:
        session.execute(delete(Job).where(Job.id.in_(ids)))
    return len(ids)


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    model: str | None = None
    task: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    metadata: tuple[tuple[str, str], ...] = ()


def parse_filter(args: dict[str, str]) -> tuple[JobFilter, int, tuple[dt.datetime, uuid.UUID] | None]:
    """Query parameters -> (filter, page size, cursor). Bad values are 400s."""
    status = args.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise bad_request(f"status must be one of {JOB_STATUSES}", "status")
    metadata = tuple((k[len("metadata."):], v) for k, v in args.items() if k.startswith("metadata."))
    limit = page_limit(args, default=100)
    return (JobFilter(status=status, model=args.get("model"), task=args.get("task"),
                      created_after=_time(args, "created_after"), created_before=_time(args, "created_before"),
                      metadata=metadata),
            limit, decode_cursor(args["after"]) if args.get("after") else None)


def list_jobs(session: Session, tenant_id: uuid.UUID, flt: JobFilter, limit: int,
              cursor: tuple[dt.datetime, uuid.UUID] | None) -> tuple[list[Job], str | None]:
    """Newest first; the cursor is the last row's (created_at, id), so pages never shift."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    for column, value in ((Job.status, flt.status), (Job.model, flt.model), (Job.task, flt.task)):
        if value is not None:
            query = query.where(column == value)
    if flt.created_after is not None:
        query = query.where(Job.created_at >= flt.created_after)
    if flt.created_before is not None:
        query = query.where(Job.created_at < flt.created_before)
    for key, value in flt.metadata:
        query = query.where(Job.meta[key].as_string() == value)
    anchor = None if cursor is None else _Anchor(*cursor)
    rows, has_more = newest_first(session, query, Job, anchor, limit)
    return rows, encode_cursor(rows[-1]) if has_more else None


def encode_cursor(job: Job) -> str:
    created = as_utc(job.created_at).isoformat()
    return base64.urlsafe_b64encode(f"{created}|{job.id}".encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        created, _, job_id = text.partition("|")
        return dt.datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("after is not a cursor this API returned", "after") from None


def _time(args: dict[str, Any], name: str) -> dt.datetime | None:
    raw = args.get(name)
    if raw is None:
        return None
    try:
        return dt.datetime.fromtimestamp(float(raw), dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise bad_request(f"{name} must be a Unix time in seconds", name) from None
