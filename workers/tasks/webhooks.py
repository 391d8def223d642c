"""Webhook delivery tasks: one attempt per message, and the sweeper behind them.

The delivery row is the truth; a message only says "look at this row now".
A task that finds the row not due (a duplicate, an early or stale message)
does nothing, and a lost message is replaced by the sweeper.
"""

from __future__ import annotations

import logging
import uuid

from celery import shared_task
from sqlalchemy.exc import OperationalError

from app.webhooks import delivery
from app.webhooks.dispatch import DELIVER_WEBHOOK, SWEEP_WEBHOOKS, send_deliveries, send_delivery
from app.webhooks.inflight import IN_FLIGHT
from workers.base import PoolqTask

log = logging.getLogger(__name__)


@shared_task(bind=True, base=PoolqTask, name=DELIVER_WEBHOOK, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=8)
def deliver_webhook(self: PoolqTask, delivery_id: str) -> None:
    settings = self.poolq.settings.webhooks
    key = uuid.UUID(delivery_id)
    if not IN_FLIGHT.admit():
        # The worker is shutting down: the row is untouched, so a fresh message lets another worker
        # make the attempt now (this one is acked, or comes back later and finds nothing due).
        send_deliveries(self.poolq.celery, [key])
        return
    claimed = None
    try:
        with self.unit_of_work() as session:
            claimed = delivery.claim_attempt(session, key, settings)
    finally:
        attempt = IN_FLIGHT.started(claimed)
    if attempt is None:
        log.debug("webhook delivery %s is not due; message ignored", delivery_id)
        return
    try:  # outside any transaction: it may take seconds
        response, refused = delivery.perform(claimed, settings, opened=attempt.opened)
    finally:
        mine = IN_FLIGHT.finished(attempt)  # an error here leaves the row to its lease and the sweeper
    if not mine:
        log.info("webhook %s attempt %d was handed back at shutdown", claimed.webhook_id, claimed.number)
        return
    with self.unit_of_work() as session:
        countdown = delivery.record_attempt(session, claimed, response, refused, settings, attempt.started_at)
    log.info("webhook %s attempt %d to %s: %s", claimed.webhook_id, claimed.number, claimed.url,
             response.status_code or response.error)
    if countdown is not None and not send_delivery(self.poolq.celery, key, countdown=countdown):
        with self.unit_of_work() as session:
            delivery.mark_unsent(session, [key])


@shared_task(bind=True, base=PoolqTask, name=SWEEP_WEBHOOKS, ignore_result=True)
def sweep_webhooks(self: PoolqTask) -> int:
    """Send every pending delivery whose message is missing: never sent, refused, or lost."""
    with self.unit_of_work() as session:
        ids = delivery.sweep_due(session, self.poolq.settings.webhooks)
    unsent = [key for key in ids if not send_delivery(self.poolq.celery, key)]
    if unsent:
        with self.unit_of_work() as session:
            delivery.mark_unsent(session, unsent)
    if ids:
        log.info("swept %d webhook delivery(ies), %d still unsent", len(ids), len(unsent))
    return len(ids) - len(unsent)
