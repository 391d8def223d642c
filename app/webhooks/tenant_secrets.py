"""A tenant's signing secret: reading it and rotating it. Functions flush; callers commit."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy.orm import Session

from app.db.base import as_utc, utcnow
from app.tenants.records import Tenant
from app.tenants.services import new_webhook_secret
from app.webhooks.signing import SigningSecrets


def signing_secrets(session: Session, tenant_id: uuid.UUID) -> SigningSecrets:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise LookupError(f"tenant {tenant_id} does not exist")
    return SigningSecrets(tenant.webhook_secret, tenant.previous_webhook_secret, as_utc(tenant.secret_rotated_at))


def rotate(session: Session, tenant_id: uuid.UUID) -> SigningSecrets:
    """A new current secret; the old one keeps signing until the grace period ends."""
    tenant = session.get(Tenant, tenant_id, with_for_update=True)  # two rotations at once: one wins, in turn
    if tenant is None:
        raise LookupError(f"tenant {tenant_id} does not exist")
    tenant.previous_webhook_secret = tenant.webhook_secret
    tenant.webhook_secret = new_webhook_secret()
    tenant.secret_rotated_at = utcnow()
    session.flush()
    return SigningSecrets(tenant.webhook_secret, tenant.previous_webhook_secret, tenant.secret_rotated_at)


def secret_resource(secrets: SigningSecrets, grace_s: float, now: dt.datetime | None = None) -> dict[str, Any]:
    """The secret, and the previous one while deliveries are still signed with it."""
    now = now or utcnow()
    body: dict[str, Any] = {"object": "webhook_secret", "secret": secrets.current}
    if secrets.rotated_at is not None:
        body["rotated_at"] = round(secrets.rotated_at.timestamp(), 3)
    if len(secrets.active(now, grace_s)) > 1:
        body["previous_secret"] = secrets.previous
        body["previous_expires_at"] = round(secrets.rotated_at.timestamp() + grace_s, 3)
    return body
