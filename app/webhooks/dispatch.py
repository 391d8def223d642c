"""Sending deliveries to the webhook workers. Always after the rows are committed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from celery import Celery

from app.broker import send_policy

from app.webhooks import delivery

log = logging.getLogger(__name__)

DELIVER_WEBHOOK = "poolq.deliver_webhook"
SWEEP_WEBHOOKS = "poolq.sweep_webhooks"


def webhook_queue(settings) -> str:
    """Webhook deliveries run on their own queue, so slow endpoints never hold up jobs."""
    return f"{settings.namespace}webhooks"


def send_delivery(celery: Celery, delivery_id: uuid.UUID, countdown: float | None = None) -> bool:
    """Publish `deliver_webhook(delivery_id)`; False when the broker cannot take it."""
    try:
        celery.send_task(
            DELIVER_WEBHOOK,
            args=[str(delivery_id)],
            queue=webhook_queue(celery.poolq.settings),
            countdown=countdown or None,
            retry=True,
            retry_policy=send_policy(),
        )
        return True
    except Exception:  # kombu raises OperationalError and friends; all mean "not sent"
        log.warning("broker refused webhook delivery %s; the sweeper will send it", delivery_id, exc_info=True)
        return False


def send_deliveries(celery: Celery, delivery_ids: Iterable[uuid.UUID]) -> None:
    """After commit: one message per delivery. A refused one is marked unsent for the sweeper."""
    unsent = [delivery_id for delivery_id in delivery_ids if not send_delivery(celery, delivery_id)]
    if not unsent:
        return
    try:
        with celery.poolq.session_factory() as session:
            delivery.mark_unsent(session, unsent)
            session.commit()
    except Exception:  # the rows stay marked as sent: the sweeper finds them once overdue
        log.warning("could not mark %d delivery(ies) unsent", len(unsent), exc_info=True)
