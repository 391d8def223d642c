"""Liveness, readiness and the served models."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from app.db.request import db_session
from app.system.loaded_models import LoadedModels

bp = Blueprint("system", __name__)


@bp.get("/health")
def health():
    # vLLM answers 200 with an empty body; a small JSON body is as good for probes.
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    poolq = current_app.extensions["poolq"]
    checks = {"database": _check_database(), "broker": _check_broker(poolq.celery)}
    # Ready means a job sent now runs without waiting for a model to load.
    checks["models"] = _check_models(poolq) if checks["broker"] == "ok" else "unknown: no broker"
    ok = all(v == "ok" for v in checks.values())
    response = jsonify({"status": "ready" if ok else "unavailable", "checks": checks})
    response.status_code = 200 if ok else 503
    if not ok:
        response.headers["Retry-After"] = "5"
    return response


@bp.get("/v1/models")
def list_models():
    poolq = current_app.extensions["poolq"]
    created = int(time.time())
    return jsonify({"object": "list", "data": [m.describe(created) for m in poolq.served]})


def _check_database() -> str:
    try:
        db_session().execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _check_models(poolq) -> str:
    reader = current_app.extensions.get("poolq.loaded_models")
    if reader is None:
        reader = current_app.extensions["poolq.loaded_models"] = LoadedModels(poolq.settings.broker_url,
                                                                              poolq.settings.namespace)
    try:
        missing = reader.missing([m.name for m in poolq.served])
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return f"loading: {', '.join(missing)}" if missing else "ok"


def _check_broker(celery) -> str:
    # One attempt, no retry: a probe wants a prompt answer, and the socket
    # timeouts in the broker options (app.broker) bound it. The PING matters:
    # a hung Redis still accepts TCP connections, so connecting proves nothing.
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0)
            client = getattr(conn.default_channel, "client", None)  # Redis transports only
            if client is not None:
                client.ping()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
