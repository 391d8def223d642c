"""`/v1/jobs`: submit and poll."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, url_for

from app.db.request import db_session
from app.http import json_body
from app.jobs import dispatch, services

bp = Blueprint("jobs", __name__)


@bp.post("/v1/jobs")
def submit_job():
    body = json_body()
    poolq = current_app.extensions["poolq"]
    model, request = services.parse_job_request(body, poolq.served, poolq.settings.max_items_per_request)
    session = db_session()
    job = services.create_job(session, model, request)
    session.commit()
    if not dispatch.send_job(poolq.celery, job):
        services.mark_unsent(session, job.id)
        session.commit()
    response = jsonify(services.job_resource(job, None))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=str(job.id))
    return response


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    session = db_session()
    job = services.get_job(session, job_id)
    return jsonify(services.job_resource(job, services.job_result_body(session, job)))
