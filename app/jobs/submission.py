"""Accepting a validated request as a job: one commit, then the broker.

Both the native `/v1/jobs` route and vLLM's pooling routes come through
here, so a job is durable before any response, whatever the route.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app, jsonify, request, url_for
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from app.db.commit import UNAVAILABLE
from app.db.request import db_session
from app.http import preferred_wait_s
from app.jobs import services
from app.jobs.options import JobOptions
from app.jobs.services import QueuedJob
from app.metrics import job_accepted
from app.served import ServedModel
from app.tenants.auth import current_tenant_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    job: QueuedJob
    sent: bool  # False: the broker refused; the sweeper sends it later


def submit(model: ServedModel, job_request: dict, options: JobOptions, job_id: uuid.UUID | None = None,
           idempotency: tuple[str, str] | None = None) -> QueuedJob:
    return submit_job(model, job_request, options, job_id, idempotency).job


def submit_job(model: ServedModel, job_request: dict, options: JobOptions, job_id: uuid.UUID | None = None,
               idempotency: tuple[str, str] | None = None) -> Submitted:
    """Commit the job, then send it to its model's queue.

    The client's answer must be the truth: once the row is committed the
    answer is 202 whatever happens to the send or to the bookkeeping after
    it, and an error (503) is raised only while nothing is kept. The INSERT
    and the send are shared with the submissions of other request threads
    arriving at the same time (app.jobs.intake).
    """
    poolq = current_app.extensions["poolq"]
    session = db_session()
    tenant_id = current_tenant_id()
    poolq.admission.check(session, model.name, tenant_id)
    job = services.new_job(model, job_request, tenant_id, options, idempotency, job_id)
    sent = poolq.intake.accept(job)
    if not sent:
        _mark_unsent(session, job.id)
    job_accepted(job.model, job.task)
    return Submitted(job, sent)


def _statement_connection() -> Connection:
    """A connection on which each statement commits by itself (the API's statement pool)."""
    return current_app.extensions["poolq"].statement_engine.connect()


def _mark_unsent(session: Session, job_id: uuid.UUID) -> None:
    """Flag the job for the sweeper's next pass (enqueued_at NULL); best effort.

    If this write fails too (the database went with the broker), the job
    still has its optimistic enqueued_at, so the sweeper sends it once that
    is older than POOLQ_REQUEUE_AFTER_S: later, but it runs. The answer stays 202.
    """
    try:
        services.mark_unsent(session, job_id)
        session.commit()
    except (DBAPIError, PoolTimeout):
        _rollback(session)
        log.warning("could not mark job %s unsent; the sweeper sends it once overdue", job_id, exc_info=True)


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    except Exception:  # the connection is gone; the session is discarded with the request anyway
        log.debug("rollback after a failed commit raised", exc_info=True)


def is_finished(job_id: uuid.UUID) -> bool:
    """A fresh read each time (a long-lived SQLite read transaction would see a stale snapshot),
    in one autocommit statement."""
    with _statement_connection() as connection:
        return services.job_finished(connection, job_id)


def finished_outcome(job_id: uuid.UUID, tenant_id: uuid.UUID) -> tuple[str, dict | None, str | None]:
    """`services.finished_outcome` in one autocommit statement, not a session's transaction."""
    with _statement_connection() as connection:
        return services.finished_outcome(connection, job_id, tenant_id)


def prefers_async() -> bool:
    """RFC 7240 `Prefer: respond-async`."""
    prefer = request.headers.get("Prefer", "")
    return any(token.strip().lower().startswith("respond-async") for token in prefer.split(","))


def long_poll(session: Session, key: str, ended: Callable[[], bool]) -> bool:
    """RFC 7240 `Prefer: wait=N` on a read of an unfinished job or batch: wait until `key` is
    announced finished (or `ended()` says so), at most N seconds and POOLQ_SYNC_TIMEOUT_S. True if
    it waited: the caller reads the row again. The request's transaction ends first, so none is
    held open while waiting and the next read is fresh (a SQLite snapshot would be stale)."""
    poolq = current_app.extensions["poolq"]
    wait_s = preferred_wait_s(poolq.settings.sync_timeout_s)
    if not wait_s:
        return False
    session.rollback()
    try:
        poolq.events.wait_for(key, wait_s, ended)
    except UNAVAILABLE:
        pass  # the database is away: the caller's read answers what it finds, or its 503
    return True


def accepted(job: QueuedJob, applied_async: bool = False):
    response = jsonify(services.job_resource(job, None))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=str(job.id))
    if applied_async:
        response.headers["Preference-Applied"] = "respond-async"
    return response
