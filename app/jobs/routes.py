"""`/v1/jobs`: submit any pooling task as a job; poll, list, cancel, delete."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy.exc import IntegrityError

from app.db.request import db_session
from app.errors import APIError
from app.http import json_body
from app.jobs import lifecycle, services
from app.jobs.records import FINISHED_STATUSES
from app.jobs.options import parse_job_options, request_hash, with_webhook
from app.jobs.submission import accepted, is_finished, long_poll, submit
from app.tenants.auth import current_tenant_id
from app.webhooks.dispatch import send_deliveries
from app.webhooks.services import job_event

bp = Blueprint("jobs", __name__)


@bp.post("/v1/jobs")
def submit_job():
    poolq = current_app.extensions["poolq"]
    body = json_body()
    model, job_request = services.parse_job_request(
        body, poolq.served, poolq.settings.max_items_per_request, request.headers.get("X-Request-Id"))
    options = with_webhook(parse_job_options(body), poolq.settings)
    key = request.headers.get("Idempotency-Key")
    if not key:
        return accepted(submit(model, job_request, options))
    if len(key) > 255:
        raise APIError(400, "Idempotency-Key is longer than 255 characters.", param="Idempotency-Key")
    fingerprint = request_hash(body)
    replay = _replay(key, fingerprint)
    if replay is not None:
        return replay
    try:
        return accepted(submit(model, job_request, options, idempotency=(key, fingerprint)))
    except IntegrityError:
        # A concurrent request with the same key won the insert: answer as its replay.
        db_session().rollback()
        replay = _replay(key, fingerprint)
        if replay is None:
            raise
        return replay


def _replay(key: str, fingerprint: str):
    """The same key and body return the same job; the same key with another body is a 409."""
    job = services.find_idempotent(db_session(), current_tenant_id(), key)
    if job is None:
        return None
    if job.request_hash != fingerprint:
        raise APIError(409, "This Idempotency-Key was used with a different request body.", "ConflictError",
                       param="Idempotency-Key")
    response = accepted(job)
    response.set_data(_resource_json(job))
    response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/v1/jobs")
def list_jobs():
    flt, limit, cursor = lifecycle.parse_filter(request.args.to_dict())
    jobs, next_cursor = lifecycle.list_jobs(db_session(), current_tenant_id(), flt, limit, cursor)
    return jsonify({"object": "list", "data": [services.job_resource(job, None) for job in jobs],
                    "has_more": next_cursor is not None, "next_cursor": next_cursor})


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    """With `Prefer: wait=N` an unfinished job is answered when it finishes, or after N seconds
    as it then is: a client learns of the end at once, without polling (submission.long_poll)."""
    session = db_session()
    job = services.get_job(session, job_id, current_tenant_id())
    if job.status not in FINISHED_STATUSES:
        key = job.id  # read before long_poll's rollback, which expires the row
        if long_poll(session, str(key), lambda: is_finished(key)):
            job = services.get_job(session, job_id, current_tenant_id())
    return current_app.response_class(_resource_json(job), mimetype="application/json")


def _resource_json(job) -> str:
    return services.job_resource_json(job, services.job_result_json(db_session(), job), current_app.json.dumps)


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    session = db_session()
    job = lifecycle.cancel_job(session, job_id, current_tenant_id())
    deliveries = job_event(session, job.id, "completed")
    session.commit()
    poolq = current_app.extensions["poolq"]
    poolq.events.publish_cancelled(str(job.id))  # its worker stops it at its next slice
    send_deliveries(poolq.celery, deliveries)
    return jsonify(services.job_resource(job, None))


@bp.delete("/v1/jobs/<job_id>")
def delete_job(job_id: str):
    session = db_session()
    lifecycle.delete_job(session, job_id, current_tenant_id())
    session.commit()
    return jsonify({"id": job_id, "object": "job.deleted", "deleted": True})
