"""Webhook routes: the caller's signing secret, and the deliveries of its jobs.

Everything is scoped to the caller's tenant: another tenant's job or
delivery is as absent as a missing one (404).
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy.orm import selectinload

from app.db.request import db_session
from app.tenants.auth import current_tenant_id
from app.webhooks import services, tenant_secrets
from app.webhooks.dispatch import send_deliveries
from app.webhooks.records import WebhookDelivery

bp = Blueprint("webhooks", __name__)


def _grace_s() -> float:
    return current_app.extensions["poolq"].settings.webhooks.secret_grace_s


@bp.get("/v1/webhooks/secret")
def get_secret():
    secrets = tenant_secrets.signing_secrets(db_session(), current_tenant_id())
    return jsonify(tenant_secrets.secret_resource(secrets, _grace_s()))


@bp.post("/v1/webhooks/secret/rotate")
def rotate_secret():
    session = db_session()
    secrets = tenant_secrets.rotate(session, current_tenant_id())
    session.commit()
    return jsonify(tenant_secrets.secret_resource(secrets, _grace_s()))


@bp.get("/v1/jobs/<job_id>/webhook-deliveries")
def list_deliveries(job_id: str):
    deliveries = services.job_deliveries(db_session(), current_tenant_id(), job_id)
    return jsonify({"object": "list", "data": [services.delivery_resource(d) for d in deliveries]})


@bp.post("/v1/webhook-deliveries/<delivery_id>/redeliver")
def redeliver(delivery_id: str):
    session = db_session()
    delivery = services.redeliver(session, current_tenant_id(), delivery_id)
    session.commit()
    send_deliveries(current_app.extensions["poolq"].celery, [delivery.id])
    # Read back after the commit, with its attempts, for the answer.
    delivery = session.get(WebhookDelivery, delivery.id, options=[selectinload(WebhookDelivery.attempt_log)],
                           populate_existing=True)
    response = jsonify(services.delivery_resource(delivery))
    response.status_code = 202
    return response
