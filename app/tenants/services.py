"""Tenants, API keys and webhook secrets. Functions flush; callers commit."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.tenants.records import ApiKey, Tenant

KEY_PREFIX = "pq"


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: "whsec_" + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str, max_queued_jobs: int | None = None) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=uuid.uuid4(), name=name, webhook_secret=new_webhook_secret(),
                        max_queued_jobs=max_queued_jobs, created_at=utcnow())
        session.add(tenant)
        session.flush()
    elif max_queued_jobs is not None:
        tenant.max_queued_jobs = max_queued_jobs
    return tenant


@dataclass(frozen=True)
class CreatedKey:
    id: uuid.UUID
    tenant: str
    key: str  # shown once; only its hash is stored


def create_key(session: Session, tenant_name: str, name: str | None = None,
               max_queued_jobs: int | None = None) -> CreatedKey:
    tenant = get_or_create_tenant(session, tenant_name, max_queued_jobs)
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=uuid.uuid4(), tenant_id=tenant.id, name=name, prefix=prefix, key_hash=hash_key(key),
                 created_at=utcnow())
    session.add(row)
    session.flush()
    return CreatedKey(row.id, tenant.name, key)


def list_keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, Tenant]]:
    query = select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id).order_by(ApiKey.created_at)
    if tenant_name:
        query = query.where(Tenant.name == tenant_name)
    return [(row.ApiKey, row.Tenant) for row in session.execute(query)]


def revoke_key(session: Session, key_id_or_prefix: str) -> bool:
    try:
        condition = ApiKey.id == uuid.UUID(key_id_or_prefix)
    except ValueError:
        condition = ApiKey.prefix == key_id_or_prefix
    result = session.execute(update(ApiKey).where(condition, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
    return result.rowcount > 0


# Touch last_used_at at most this often: a write per request would cost more than the request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def authenticate(session: Session, presented: str) -> uuid.UUID | None:
    """The tenant id of a valid, unrevoked key; None otherwise."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(presented)):
        return None
    now = utcnow()
    last = row.last_used_at
    if last is None or (now - (last if last.tzinfo else last.replace(tzinfo=dt.timezone.utc))) > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.flush()
    return row.tenant_id
