"""vLLM's pooling routes over the job queue, synchronous unless asked otherwise.

Each request becomes a job. By default the request waits for it up to
POOLQ_SYNC_TIMEOUT_S and answers what vLLM would; past the bound, or at once
with `Prefer: respond-async`, it answers 202 with the job's Location, and
`GET /v1/jobs/{id}` later carries the same body as `result`.
"""

from __future__ import annotations

import uuid

from flask import Blueprint, current_app, jsonify, request

from app.errors import error_body
from app.http import json_body
from app.jobs.options import parse_job_options, with_webhook
from app.jobs.submission import (UNAVAILABLE, accepted, finished_outcome, is_finished, prefers_async, submit,
                                  submit_job)
from app import tokenization
from app.pooling.binary import binary_response
from app.pooling.invocations import invocation_endpoint
from app.pooling.requests import parse
from app.tenants.auth import current_tenant_id

bp = Blueprint("pooling", __name__)

ROUTES = {
    "/classify": "classify",
    "/pooling": "pooling",
    "/score": "score",
    "/v1/score": "score",
    "/rerank": "rerank",
    "/v1/rerank": "rerank",
    "/v2/rerank": "rerank",
}


def handle(endpoint: str, body=None):
    poolq = current_app.extensions["poolq"]
    body = json_body() if body is None else body
    model, job_request = parse(endpoint, body, poolq.served, poolq.settings.max_items_per_request,
                               request.headers.get("X-Request-Id"))
    options = with_webhook(parse_job_options(body), poolq.settings)
    job_id = uuid.uuid4()
    if prefers_async():
        return accepted(submit(model, job_request, options, job_id), applied_async=True)
    with poolq.events.expect(job_id) as wait:
        submitted = submit_job(model, job_request, options, job_id)
        job = submitted.job
        if not submitted.sent:
            return accepted(job)  # it runs once the sweeper sends it: no point holding the client
        try:
            done = wait(poolq.settings.sync_timeout_s, lambda: is_finished(job_id))
        except UNAVAILABLE:
            done = False  # the job is kept: its Location is the truthful answer, not a 503
    if not done:
        return accepted(job)
    if wait.result_json is not None:  # it came with the completion message
        status, error, result_json = "succeeded", None, wait.result_json
    else:
        try:
            status, error, result_json = finished_outcome(job_id, current_tenant_id())
        except UNAVAILABLE:
            return accepted(job)
    if status == "succeeded":
        if job_request.get("binary_response"):
            return binary_response(result_json, job_request, model.card.num_labels)
        # Verbatim: the body the worker stored is already vLLM's response.
        return current_app.response_class(result_json, mimetype="application/json")
    error = error or error_body(f"The job was {status}.", "JobCancelled", None, 409)["error"]
    response = jsonify({"error": error})
    response.status_code = int(error.get("code") or 500)
    return response


def _view(endpoint: str):
    def view():
        return handle(endpoint)

    return view


for _rule, _endpoint in ROUTES.items():
    bp.add_url_rule(_rule, endpoint=_rule.strip("/").replace("/", "_"), view_func=_view(_endpoint),
                    methods=["POST"])


@bp.post("/invocations")
def invocations():
    """SageMaker: the body picks the route (app/pooling/invocations.py). Not in ROUTES: batches take no such URL."""
    body = json_body()
    return handle(invocation_endpoint(body, current_app.extensions["poolq"].served), body)


@bp.route("/ping", methods=["GET", "POST"])
def ping():
    """SageMaker's health check, beside /invocations: vLLM answers it as /health, 200 with no body."""
    return "", 200


# vLLM serves these beside its pooling routes; they answer in the API, no job.
bp.add_url_rule("/tokenize", view_func=tokenization.tokenize, methods=["POST"])
bp.add_url_rule("/detokenize", view_func=tokenization.detokenize, methods=["POST"])
