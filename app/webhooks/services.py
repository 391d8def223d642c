"""Webhook subscriptions, delivery rows, and what the routes show. Functions flush; callers commit.

A job (or a batch, app/batches/events.py) carries `webhook` and
`webhook_events_filter`; each subscribed event becomes one delivery row,
written in the same transaction as the state change, so an event is never
lost between the two.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import as_utc, utcnow
from app.errors import APIError, bad_request, not_found
from app.jobs.records import Job
from app.jobs.services import job_resource, job_result_body
from app.webhooks.records import DisabledEndpoint, WebhookDelivery
from app.webhooks.ssrf import RefusedURL, check_url

EVENTS = ("started", "completed")  # "completed" covers succeeded, failed and cancelled
DEFAULT_EVENTS = ["completed"]


def validate_subscription(url: str | None, events: list[str] | None, settings: Any, *,
                          session: Session | None = None, tenant_id: uuid.UUID | None = None,
                          known: tuple[str, ...] = EVENTS,
                          default: tuple[str, ...] | list[str] = tuple(DEFAULT_EVENTS),
                          ) -> tuple[str | None, list[str] | None]:
    """At submit: (url, events) to store on the job, or a 400 saying what is wrong.

    `session` and `tenant_id` default to the current request's; `known` and
    `default` are the subject's events (a job's by default).
    """
    if url is None:
        if events is not None:
            raise bad_request("`webhook_events_filter` needs a `webhook` URL.", param="webhook_events_filter")
        return None, None
    try:
        check_url(url, settings.webhooks)
    except RefusedURL as exc:
        raise bad_request(f"The webhook URL is not allowed: {exc}.", param="webhook") from None
    if endpoint_disabled(session or _request_session(), tenant_id or _request_tenant(), url):
        raise bad_request("The webhook URL answered 410 Gone to an earlier delivery and is disabled.",
                          param="webhook")
    return url, _valid_events(events, known, default)


def _valid_events(events: Any, known: tuple[str, ...], default: tuple[str, ...] | list[str]) -> list[str]:
    if events is None:
        return list(default)
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise bad_request(f"`webhook_events_filter` must be a non-empty list of events from {list(known)}.",
                          param="webhook_events_filter")
    unknown = [e for e in events if e not in known]
    if unknown:
        raise bad_request(f"Unknown webhook event(s) {unknown}; known events: {list(known)}.",
                          param="webhook_events_filter")
    return list(dict.fromkeys(events))


def endpoint_disabled(session: Session, tenant_id: uuid.UUID, url: str) -> bool:
    return session.get(DisabledEndpoint, (tenant_id, url)) is not None


def job_event(session: Session, job_id: uuid.UUID, event: str) -> list[uuid.UUID]:
    """In the transaction of the job's state change: the deliveries it causes (flushed, not committed)."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; known: {EVENTS}")
    # The state change may have been a bulk UPDATE: flush, then read the row afresh.
    session.flush()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or not job.webhook_url or event not in (job.webhook_events or DEFAULT_EVENTS):
        return []
    if endpoint_disabled(session, job.tenant_id, job.webhook_url):
        return []
    payload = {"type": f"job.{event}", **job_resource(job, job_result_body(session, job))}
    return [add_delivery(session, job.tenant_id, job.webhook_url, payload, job_id=job.id)]


def add_delivery(session: Session, tenant_id: uuid.UUID, url: str, payload: dict[str, Any], *,
                 job_id: uuid.UUID | None = None, batch_id: str | None = None) -> uuid.UUID:
    """A pending delivery of `payload` (its `type` is the event) about one job or one batch; flushed."""
    now = utcnow()
    delivery = WebhookDelivery(
        id=uuid.uuid4(), tenant_id=tenant_id, job_id=job_id, batch_id=batch_id, event=payload["type"], url=url,
        # ASCII JSON: the exact text signed on every attempt, and never a NUL byte Postgres' text refuses.
        body=json.dumps(payload), status="pending", next_attempt_at=now,
        # Optimistic, like jobs: the send follows the commit, and a refused send is marked unsent.
        enqueued_at=now, created_at=now)
    session.add(delivery)
    session.flush()
    return delivery.id


def tenant_job(session: Session, tenant_id: uuid.UUID, job_id: str) -> Job:
    job = session.get(Job, _uuid(job_id, f"Job {job_id!r} does not exist."))
    if job is None or job.tenant_id != tenant_id:
        raise not_found(f"Job {job_id!r} does not exist.")
    return job


def job_deliveries(session: Session, tenant_id: uuid.UUID, job_id: str) -> list[WebhookDelivery]:
    job = tenant_job(session, tenant_id, job_id)
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job.id).order_by(WebhookDelivery.created_at)
    return list(session.scalars(query))


def redeliver(session: Session, tenant_id: uuid.UUID, delivery_id: str) -> WebhookDelivery:
    """A new attempt cycle on the retry schedule, under the same webhook-id."""
    missing = f"Webhook delivery {delivery_id!r} does not exist."
    delivery = session.get(WebhookDelivery, _uuid(delivery_id, missing))
    if delivery is None or delivery.tenant_id != tenant_id:
        raise not_found(missing)
    if endpoint_disabled(session, tenant_id, delivery.url):
        raise APIError(409, "The endpoint answered 410 Gone and is disabled; nothing is sent to it.", "ConflictError")
    now = utcnow()
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(
        status="pending", cycle_attempts=0, next_attempt_at=now, enqueued_at=now, finished_at=None))
    session.refresh(delivery)
    return delivery


def delivery_resource(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "object": "webhook_delivery",
        "webhook_id": delivery.webhook_id,
        "job_id": str(delivery.job_id) if delivery.job_id else None,
        "batch_id": delivery.batch_id,
        "event": delivery.event,
        "url": delivery.url,
        "status": delivery.status,
        "created_at": _epoch(delivery.created_at),
        "next_attempt_at": _epoch(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "finished_at": _epoch(delivery.finished_at),
        "attempts": [{
            "number": a.number,
            "attempted_at": _epoch(a.attempted_at),
            "status_code": a.status_code,
            "latency_ms": a.latency_ms,
            "error": a.error,
            "response_body": a.response_body,
        } for a in delivery.attempt_log],
    }


def _epoch(value) -> float | None:
    value = as_utc(value)
    return None if value is None else round(value.timestamp(), 3)


def _uuid(text: str, missing: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise not_found(missing) from None


def _request_session() -> Session:
    from app.db.request import db_session

    return db_session()


def _request_tenant() -> uuid.UUID:
    from app.tenants.auth import current_tenant_id

    return current_tenant_id()
