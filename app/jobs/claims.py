"""The worker's side of a job's rows, many jobs per statement. Functions flush; callers commit.

A worker holds a running job by lease: `worker` names the holding process
(one incarnation: host, pid and a nonce) and `lease_expires_at` says until
when. Every transition is a compare-and-set:

- claim:     queued, or running with a lapsed lease -> running, held by me
             (attempts + 1; never past the attempt cap);
- renew:     my running jobs' leases move forward, in one statement;
- finish:    running and held by me at my attempt -> succeeded | failed,
             with the result, in the caller's one transaction;
- take over: running with a lapsed lease -> running, held by me (another
             worker died); past the attempt cap -> failed instead;
- release:   my running jobs -> queued (shutting down: someone else takes them).

A cancel (or delete) from the API moves the row out of `running`, so the
holder's renew no longer returns it and its final write changes nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from app import jsontext
from app.db.base import utcnow
from app.db.driver import driver_rows
from app.jobs.records import JobResult
from app.jobs.services import JOBS_TABLE

JOBS = JOBS_TABLE
RESULTS = JobResult.__table__
_c = JOBS.c


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    tenant_id: uuid.UUID
    task: str
    model: str
    request: dict[str, Any]
    attempt: int
    # Whether the job has a webhook: the event bookkeeping (a row read per
    # transition) is skipped for the many jobs that have none.
    has_webhook: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a held job ended: `succeeded` with its body, or `failed` with vLLM's error object."""

    job_id: uuid.UUID
    attempt: int
    status: str
    body: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    error: dict[str, Any] | None = None


_RETURNED = (_c.id, _c.tenant_id, _c.task, _c.model, _c.request, _c.attempts, _c.webhook_url)


def _claimed(rows) -> list[ClaimedJob]:
    """Rows of `_RETURNED`'s columns, in its order."""
    return [ClaimedJob(job_id, tenant_id, task, model, request, attempts, webhook_url is not None)
            for job_id, tenant_id, task, model, request, attempts, webhook_url in rows]


def _lapsed(now):
    return (_c.status == "running") & (_c.lease_expires_at.is_(None) | (_c.lease_expires_at < now))


# The statements of every group claim and write, built once with parameters: building
# them per call (coercing each clause, computing its cache key) cost the worker more CPU
# than the round trips themselves, with one job per group at low load.
_CLAIM = (update(JOBS)
          .where(_c.id.in_(bindparam("ids", expanding=True)),
                 (_c.status == "queued") | _lapsed(bindparam("now")), _c.attempts < bindparam("max_attempts"))
          .values(status="running", attempts=_c.attempts + 1, worker=bindparam("worker"),
                  lease_expires_at=bindparam("lease"), started_at=bindparam("now"))
          .returning(*_RETURNED))
# `_CLAIM` on Postgres, as the driver's SQL (one text whatever the number of ids, where the expanding
# IN is rendered anew for each count), run on the driver's own cursor (app/db/driver.py): built by
# SQLAlchemy it cost a claim of nine one-text jobs ~0.4 ms more CPU on the admission thread.
_CLAIM_ON_POSTGRES = """
UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = %(worker)s,
                lease_expires_at = %(lease)s, started_at = %(now)s
WHERE id = ANY(%(ids)s)
  AND (status = 'queued' OR (status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < %(now)s)))
  AND attempts < %(max_attempts)s
RETURNING id, tenant_id, task, model, request, attempts, webhook_url
"""
_LOCK_HELD = (select(_c.id, _c.attempts)
              .where(_c.id.in_(bindparam("ids", expanding=True)), _c.status == "running",
                     _c.worker == bindparam("worker"))
              .order_by(_c.id).with_for_update())
_FINISH = (update(JOBS).where(_c.id == bindparam("b_id"), _c.status == "running", _c.worker == bindparam("b_worker"))
           .values(status=bindparam("b_status"), prompt_tokens=bindparam("b_tokens"), error=bindparam("b_error"),
                   finished_at=bindparam("b_now"), lease_expires_at=None))
_STORE_RESULT = insert(RESULTS)


def claim(session: Session, job_ids: Iterable[uuid.UUID], worker: str, lease_s: float,
          max_attempts: int) -> list[ClaimedJob]:
    """Claim what can be claimed of `job_ids` in one statement. The rest is finished, cancelled,
    deleted or held by a live worker: a redelivery, nothing to do."""
    ids = sorted(set(job_ids))  # one lock order for every claimer
    if not ids:
        return []
    now = utcnow()
    params = {"ids": ids, "now": now, "max_attempts": max_attempts, "worker": worker,
              "lease": now + dt.timedelta(seconds=lease_s)}
    # Core statements on the transaction's connection: the Session's ORM layer would only add CPU.
    connection = session.connection()
    if connection.dialect.driver == "psycopg":
        return _claimed(driver_rows(connection, _CLAIM_ON_POSTGRES, params))
    return _claimed(connection.execute(_CLAIM, params).all())


def renew(session: Session, worker: str, lease_s: float) -> set[uuid.UUID]:
    """Move all my leases forward; the ids returned are the jobs I still hold."""
    expires = utcnow() + dt.timedelta(seconds=lease_s)
    connection = session.connection()
    if connection.dialect.driver == "psycopg":
        rows = connection.exec_driver_sql(_RENEW_IN_ID_ORDER, {"worker": worker, "expires": expires}).all()
    else:  # SQLite locks the whole database: no order to keep
        rows = session.execute(update(JOBS).where(_c.worker == worker, _c.status == "running")
                               .values(lease_expires_at=expires).returning(_c.id)).all()
    return {r.id for r in rows}


# The rows are locked in id order, as the group write (finish) locks them. A plain UPDATE locked
# them in the order it found them in the table; with the heartbeat holding one finished job's row
# and the writer another, each waited for the other until Postgres's deadlock check (1 s) failed
# one, and a group of finished jobs waited that second (seen as a one-text p99 of 1.1 s under
# load; benchmarks.md run 27). The lock is a MATERIALIZED CTE, so the planner cannot fold its
# ORDER BY ... FOR UPDATE into the UPDATE's join.
_RENEW_IN_ID_ORDER = """
WITH mine AS MATERIALIZED (
    SELECT id FROM jobs WHERE worker = %(worker)s AND status = 'running' ORDER BY id FOR UPDATE
)
UPDATE jobs SET lease_expires_at = %(expires)s FROM mine
WHERE jobs.id = mine.id AND jobs.worker = %(worker)s AND jobs.status = 'running'
RETURNING jobs.id
"""


def still_held(session: Session, worker: str, job_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `job_ids` I still hold: the rest were cancelled, deleted or taken over."""
    ids = list(job_ids)
    if not ids:
        return set()
    return set(session.scalars(select(_c.id).where(_c.id.in_(ids), _c.worker == worker, _c.status == "running")))


def finish(session: Session, worker: str, outcomes: list[Outcome]) -> list[Outcome]:
    """Write the outcomes of jobs I still hold, in the caller's transaction; return those written.

    The rows are locked first, in id order, so the set written is exactly the
    set checked, and two transactions touching the same jobs queue up
    instead of deadlocking.
    """
    if not outcomes:
        return []
    connection = session.connection()  # as in claim
    if connection.dialect.driver == "psycopg":
        return _finish_in_one_statement(connection, worker, outcomes)
    by_id = {o.job_id: o for o in outcomes}
    held = connection.execute(_LOCK_HELD, {"ids": sorted(by_id), "worker": worker}).all()
    won = [by_id[r.id] for r in held if r.attempts == by_id[r.id].attempt]
    if not won:
        return []
    now = utcnow()
    connection.execute(_FINISH, [{"b_id": o.job_id, "b_worker": worker, "b_status": o.status,
                                  "b_tokens": o.prompt_tokens, "b_error": o.error, "b_now": now} for o in won])
    succeeded = [{"job_id": o.job_id, "body": o.body, "created_at": now} for o in won if o.status == "succeeded"]
    if succeeded:
        connection.execute(_STORE_RESULT, succeeded)
    return won


# The same finish on Postgres in ONE statement: the lock in id order, the UPDATE of the rows
# locked and the INSERT of their results. Above, it is three (the UPDATE and the INSERT
# executemany), each with SQLAlchemy's per-execution work on the worker's busiest threads; a
# group of 7 one-text jobs took 0.9-1.2 ms of the writer's CPU there and 0.4-0.7 here, a group
# of 16 1.3 ms and 0.65. The outcomes travel as parallel arrays, sent in psycopg's binary format
# (`%(name)b`, hence the driver's own SQL): in its text format psycopg escapes every element
# in Python, 37 ms for one 5,000-text result. JSON goes as text, cast by the server as before.
_FINISH_ONE_STATEMENT = """
WITH outcome AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::integer[], %(statuses)b::text[], %(tokens)b::integer[],
                         %(errors)b::text[], %(bodies)b::text[]) AS o(id, attempt, status, tokens, error, body)
), held AS MATERIALIZED (
    SELECT jobs.id FROM jobs JOIN outcome ON outcome.id = jobs.id AND outcome.attempt = jobs.attempts
    WHERE jobs.status = 'running' AND jobs.worker = %(worker)s
    ORDER BY jobs.id FOR UPDATE OF jobs
), written AS (
    UPDATE jobs SET status = outcome.status, prompt_tokens = outcome.tokens, error = outcome.error::jsonb,
                    finished_at = %(now)s, lease_expires_at = NULL
    FROM held JOIN outcome ON outcome.id = held.id
    WHERE jobs.id = held.id AND jobs.status = 'running' AND jobs.worker = %(worker)s
    RETURNING jobs.id
), stored AS (
    INSERT INTO job_results (job_id, body, created_at)
    SELECT outcome.id, outcome.body::json, %(now)s FROM outcome JOIN written ON written.id = outcome.id
    WHERE outcome.status = 'succeeded'
)
SELECT id FROM written
"""


def _finish_in_one_statement(connection, worker: str, outcomes: list[Outcome]) -> list[Outcome]:
    outcomes = list({o.job_id: o for o in outcomes}.values())  # one row each, as `by_id` above
    rows = driver_rows(connection, _FINISH_ONE_STATEMENT, {
        "ids": [o.job_id for o in outcomes], "attempts": [o.attempt for o in outcomes],
        "statuses": [o.status for o in outcomes], "tokens": [o.prompt_tokens for o in outcomes],
        "errors": [None if o.error is None else jsontext.dumps(o.error) for o in outcomes],
        "bodies": [None if o.body is None else jsontext.dumps(o.body) for o in outcomes],
        "worker": worker, "now": utcnow()})
    written = {job_id for job_id, in rows}
    return [o for o in outcomes if o.job_id in written]


def take_over(session: Session, worker: str, models: Iterable[str], lease_s: float, max_attempts: int,
              limit: int = 500) -> list[ClaimedJob]:
    """Hold the running jobs of my models whose worker stopped renewing (it died)."""
    now = utcnow()
    lapsed = select(_c.id).where(_lapsed(now), _c.model.in_(list(models)), _c.attempts < max_attempts) \
        .order_by(_c.id).limit(limit)
    ids = list(session.scalars(lapsed))
    if not ids:
        return []
    rows = session.execute(
        update(JOBS).where(_c.id.in_(ids), _lapsed(now), _c.attempts < max_attempts)
        .values(attempts=_c.attempts + 1, worker=worker, lease_expires_at=now + dt.timedelta(seconds=lease_s))
        .returning(*_RETURNED)).all()
    return _claimed(rows)


def fail_exhausted(session: Session, models: Iterable[str], max_attempts: int,
                   limit: int = 500) -> list[tuple[uuid.UUID, bool]]:
    """Fail the jobs whose lease lapsed on their last allowed attempt: each attempt ended with
    its worker gone, so the job itself is the likely cause (a poison job). Returns (id, has_webhook)."""
    now = utcnow()
    ids = list(session.scalars(select(_c.id).where(_lapsed(now), _c.model.in_(list(models)),
                                                   _c.attempts >= max_attempts).order_by(_c.id).limit(limit)))
    if not ids:
        return []
    error = {"message": f"The job was attempted {max_attempts} times and each time its worker stopped before "
                        "finishing it (the job may crash the worker); it is not retried (POOLQ_MAX_ATTEMPTS).",
             "type": "InternalServerError", "param": None, "code": 500}
    rows = session.execute(
        update(JOBS).where(_c.id.in_(ids), _lapsed(now), _c.attempts >= max_attempts)
        .values(status="failed", error=error, finished_at=now, lease_expires_at=None)
        .returning(_c.id, _c.webhook_url)).all()
    return [(r.id, r.webhook_url is not None) for r in rows]


def release(session: Session, worker: str, job_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Give held jobs back (queued, no lease) so another worker starts them at once; the
    attempt is not counted against the job. Returns the ids released."""
    ids = list(job_ids)
    if not ids:
        return []
    rows = session.execute(
        update(JOBS).where(_c.id.in_(ids), _c.worker == worker, _c.status == "running")
        .values(status="queued", worker=None, lease_expires_at=None, attempts=_c.attempts - 1,
                enqueued_at=utcnow())
        .returning(_c.id)).all()
    return [r.id for r in rows]
