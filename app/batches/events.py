"""A batch's webhook: subscribed at create, one delivery when the batch ends.

The subscription is checked at create (services.create_batch, as a job's
is: URL safety, endpoints disabled by a 410). The events are the final
states, named as OpenAI names its batch events: `batch.completed`, `batch.failed`, `batch.expired`, `batch.cancelled`. A
subscription gets all four unless `webhook_events_filter` picks some
(`["completed", "failed"]`, say). The payload is the batch object as
`GET /v1/batches/{id}` returns it, plus `type`.

`final_event` is called by whoever wins a final compare-and-set, in that
transaction (a batch ends once, so it delivers at most once); the caller
sends the deliveries after the commit (app.webhooks.dispatch.send_deliveries).
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.batches.records import Batch
from app.batches.services import BATCH_EVENTS, batch_resource, get_batch
from app.webhooks.records import WebhookDelivery
from app.webhooks.services import add_delivery, endpoint_disabled


def final_event(session: Session, batch_id: str) -> list[uuid.UUID]:
    """In the transaction that ended the batch: its delivery, if subscribed (flushed, not committed)."""
    # The state change was a bulk UPDATE: flush, then read the row afresh.
    session.flush()
    batch = session.get(Batch, batch_id, populate_existing=True)
    if batch is None or not batch.webhook_url or batch.status not in BATCH_EVENTS:
        return []
    if batch.status not in (batch.webhook_events or BATCH_EVENTS):
        return []
    if endpoint_disabled(session, batch.tenant_id, batch.webhook_url):
        return []
    payload = {"type": f"batch.{batch.status}", **batch_resource(batch)}
    return [add_delivery(session, batch.tenant_id, batch.webhook_url, payload, batch_id=batch.id)]


def batch_deliveries(session: Session, tenant_id: uuid.UUID, batch_id: str) -> list[WebhookDelivery]:
    batch = get_batch(session, batch_id, tenant_id)
    return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.batch_id == batch.id)
                                .order_by(WebhookDelivery.created_at)))
