"""One delivery attempt, from claim to record. Functions flush; callers commit.

Claim and record are compare-and-sets on the delivery row, so duplicate
broker messages, the sweeper and a redelivery can all race without two
attempts of one cycle running at once or a stale attempt rewriting the row.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPConnection

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.webhooks.records import DisabledEndpoint, WebhookAttempt, WebhookDelivery
from app.webhooks.settings import WebhookSettings
from app.webhooks.signing import signed_headers
from app.webhooks.ssrf import RefusedURL, Resolver, UnresolvableHost, check_url, system_resolver
from app.webhooks.tenant_secrets import signing_secrets
from app.webhooks.transport import Response, post

# A broker message may early-fire by clock skew between hosts; this much is still "due".
CLOCK_SKEW = dt.timedelta(seconds=2)
# Retries later than this are left to the sweeper rather than a Celery countdown:
# Redis redelivers an unacked (ETA-held) message after its visibility timeout.
MAX_COUNTDOWN_S = 600.0


@dataclass(frozen=True)
class ClaimedAttempt:
    delivery_id: uuid.UUID
    webhook_id: str
    url: str
    body: str
    number: int  # over the delivery's life
    cycle_attempt: int  # within the current cycle: indexes the retry schedule
    secrets: list[str]


def claim_attempt(session: Session, delivery_id: uuid.UUID, settings: WebhookSettings) -> ClaimedAttempt | None:
    """Take the next attempt of a due, pending delivery; None when it is not this message's to make."""
    now = utcnow()
    # While the attempt runs, the row is not due: the sweeper leaves it alone
    # until this lease lapses (the worker died mid-request).
    lease = dt.timedelta(seconds=settings.connect_timeout_s + settings.read_timeout_s + 30)
    row = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
               WebhookDelivery.next_attempt_at <= now + CLOCK_SKEW)
        .values(attempts=WebhookDelivery.attempts + 1, cycle_attempts=WebhookDelivery.cycle_attempts + 1,
                next_attempt_at=now + lease, enqueued_at=now)
        .returning(WebhookDelivery.tenant_id, WebhookDelivery.url, WebhookDelivery.body,
                   WebhookDelivery.attempts, WebhookDelivery.cycle_attempts)
    ).one_or_none()
    if row is None:
        return None
    if session.get(DisabledEndpoint, (row.tenant_id, row.url)) is not None:
        # Another delivery got a 410 from this endpoint after this one was created.
        _finish(session, delivery_id, row.attempts, "disabled", now)
        return None
    secrets = signing_secrets(session, row.tenant_id).active(now, settings.secret_grace_s)
    return ClaimedAttempt(delivery_id, f"msg_{delivery_id.hex}", row.url, row.body, row.attempts,
                          row.cycle_attempts, secrets)


def perform(claimed: ClaimedAttempt, settings: WebhookSettings, resolver: Resolver = system_resolver,
            opened: Callable[[HTTPConnection], None] | None = None) -> tuple[Response, bool]:
    """POST the signed body; (response, refused). No database work here. `opened`: see transport.post."""
    try:
        addresses = check_url(claimed.url, settings, resolver)  # again: DNS may have changed since submit
    except UnresolvableHost as exc:
        return Response(None, 0, error=str(exc)), False
    except RefusedURL as exc:
        return Response(None, 0, error=f"refused: {exc}"), True
    headers = signed_headers(claimed.secrets, claimed.webhook_id, int(time.time()), claimed.body)
    response = Response(None, 0, error="no address to call")
    for address in addresses:  # A and AAAA records: the next address only if this one never answered
        response = post(claimed.url, address, headers, claimed.body,
                        settings.connect_timeout_s, settings.read_timeout_s, opened)
        if response.reached:
            break
    return response, False


def outcome(response: Response, refused: bool) -> str:
    """"succeeded", "retry", "disabled" or "failed"."""
    code = response.status_code
    if refused:
        return "failed"
    if code is None or code == 429 or code >= 500:
        return "retry"  # connection error, timeout, rate limit, server error
    if 200 <= code < 300:
        return "succeeded"
    return "disabled" if code == 410 else "failed"  # other 4xx, and redirects (never followed)


def record_attempt(session: Session, claimed: ClaimedAttempt, response: Response, refused: bool,
                   settings: WebhookSettings, attempted_at: dt.datetime) -> float | None:
    """Store the attempt and move the delivery on; the countdown of a retry to send, if any."""
    session.add(WebhookAttempt(
        id=uuid.uuid4(), delivery_id=claimed.delivery_id, number=claimed.number, attempted_at=attempted_at,
        status_code=response.status_code, latency_ms=response.latency_ms, error=response.error,
        response_body=response.body_prefix))
    now = utcnow()
    result = outcome(response, refused)
    if result == "retry" and claimed.cycle_attempt >= len(settings.retry_schedule):
        result = "failed"  # the schedule is spent
    if result != "retry":
        if result == "disabled":
            _disable_endpoint(session, claimed.delivery_id, now)
        _finish(session, claimed.delivery_id, claimed.number, result, now)
        return None
    delay = jittered(settings.retry_schedule[claimed.cycle_attempt], settings.retry_jitter)
    by_countdown = delay <= MAX_COUNTDOWN_S
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == claimed.delivery_id, WebhookDelivery.status == "pending",
               WebhookDelivery.attempts == claimed.number)
        .values(next_attempt_at=now + dt.timedelta(seconds=delay), enqueued_at=now if by_countdown else None))
    return delay if by_countdown else None


def hand_back(session: Session, claimed: ClaimedAttempt, attempted_at: dt.datetime) -> bool:
    """A worker shutting down gives back an attempt still waiting on its endpoint: due now, for
    another worker. It is logged as interrupted (the endpoint may have seen it), but its place in
    the retry schedule is not spent. False when the attempt was settled meanwhile."""
    now = utcnow()
    released = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == claimed.delivery_id, WebhookDelivery.status == "pending",
               WebhookDelivery.attempts == claimed.number)
        .values(next_attempt_at=now, enqueued_at=now, cycle_attempts=WebhookDelivery.cycle_attempts - 1)
    ).rowcount
    if released:
        session.add(WebhookAttempt(
            id=uuid.uuid4(), delivery_id=claimed.delivery_id, number=claimed.number, attempted_at=attempted_at,
            status_code=None, latency_ms=round((now - attempted_at).total_seconds() * 1000),
            error="interrupted: the webhook worker shut down; another worker retries it"))
    return bool(released)


def jittered(delay: float, jitter: float) -> float:
    return max(0.0, delay * (1 + random.uniform(-jitter, jitter)))


def mark_unsent(session: Session, delivery_ids: list[uuid.UUID]) -> None:
    """The broker refused the message: the sweeper sends it once the attempt is due."""
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids),
                                                  WebhookDelivery.status == "pending").values(enqueued_at=None))


def sweep_due(session: Session, settings: WebhookSettings, limit: int = 500) -> list[uuid.UUID]:
    """Pending deliveries with no live message: never sent, or sent so long ago it was lost."""
    now = utcnow()
    overdue = now - dt.timedelta(seconds=settings.requeue_after_s)
    lost = (WebhookDelivery.status == "pending") & (WebhookDelivery.next_attempt_at <= now) & (
        WebhookDelivery.enqueued_at.is_(None) | (WebhookDelivery.next_attempt_at < overdue))
    ids = list(session.scalars(select(WebhookDelivery.id).where(lost)
                               .order_by(WebhookDelivery.next_attempt_at).limit(limit)))
    if not ids:
        return []
    # Due now, sent now: not swept again before another requeue window passes.
    rows = session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(ids), lost)
                           .values(next_attempt_at=now, enqueued_at=now).returning(WebhookDelivery.id))
    return [row.id for row in rows]


def _finish(session: Session, delivery_id: uuid.UUID, number: int, status: str, now: dt.datetime) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
               WebhookDelivery.attempts == number)
        .values(status=status, next_attempt_at=None, enqueued_at=None, finished_at=now))


def _disable_endpoint(session: Session, delivery_id: uuid.UUID, now: dt.datetime) -> None:
    tenant_id, url = session.execute(select(WebhookDelivery.tenant_id, WebhookDelivery.url)
                                     .where(WebhookDelivery.id == delivery_id)).one()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    # Two deliveries may get their 410 at once: the second insert is a no-op.
    session.execute(dialect.insert(DisabledEndpoint).values(tenant_id=tenant_id, url=url, disabled_at=now)
                    .on_conflict_do_nothing())
