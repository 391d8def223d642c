"""`/v1/jobs`: submit any pooling task as a job, and poll it."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app.db.request import db_session
from app.http import json_body
from app.jobs import services
from app.jobs.submission import accepted, submit

bp = Blueprint("jobs", __name__)


@bp.post("/v1/jobs")
def submit_job():
    poolq = current_app.extensions["poolq"]
    model, job_request = services.parse_job_request(
        json_body(), poolq.served, poolq.settings.max_items_per_request, request.headers.get("X-Request-Id"))
    return accepted(submit(model, job_request))


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    session = db_session()
    job = services.get_job(session, job_id)
    return jsonify(services.job_resource(job, services.job_result_body(session, job)))
