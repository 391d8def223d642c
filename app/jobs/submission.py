"""Accepting a validated request as a job: one commit, then the broker.

Both the native `/v1/jobs` route and vLLM's pooling routes come through
here, so a job is durable before any response, whatever the route.
"""

from __future__ import annotations

import uuid

from flask import current_app, jsonify, request, url_for

from app.db.request import db_session
from app.jobs import dispatch, services
from app.jobs.options import JobOptions
from app.jobs.records import Job
from app.metrics import job_accepted
from app.served import ServedModel
from app.tenants.auth import current_tenant_id


def submit(model: ServedModel, job_request: dict, options: JobOptions, job_id: uuid.UUID | None = None,
           idempotency: tuple[str, str] | None = None) -> Job:
    """Commit the job, then send it to its model's queue."""
    poolq = current_app.extensions["poolq"]
    session = db_session()
    tenant_id = current_tenant_id()
    poolq.admission.check(session, model.name, tenant_id)
    job = services.create_job(session, model, job_request, tenant_id, options, idempotency, job_id)
    session.commit()
    if not dispatch.send_job(poolq.celery, job):
        services.mark_unsent(session, job.id)
        session.commit()
    job_accepted(job.model, job.task)
    return job


def is_finished(job_id: uuid.UUID) -> bool:
    """A fresh read each time: a long-lived SQLite read transaction would see a stale snapshot."""
    with current_app.extensions["poolq"].session_factory() as session:
        return services.job_finished(session, job_id)


def prefers_async() -> bool:
    """RFC 7240 `Prefer: respond-async`."""
    prefer = request.headers.get("Prefer", "")
    return any(token.strip().lower().startswith("respond-async") for token in prefer.split(","))


def accepted(job: Job, applied_async: bool = False):
    response = jsonify(services.job_resource(job, None))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=str(job.id))
    if applied_async:
        response.headers["Preference-Applied"] = "respond-async"
    return response
