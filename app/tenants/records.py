"""ORM rows for tenants and API keys."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, utcnow

# Owns every job when authentication is off (the embedded default); the
# first migration creates it, so jobs always have a tenant.
DEFAULT_TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Standard Webhooks secret ("whsec_" + base64). During a rotation's grace
    # period deliveries are signed with the previous secret too.
    webhook_secret: Mapped[str] = mapped_column(String(128))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(128), default=None)
    secret_rotated_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Queued jobs past which this tenant's submissions get 429 (None: the default).
    max_queued_jobs: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(64), default=None)
    # Keys are looked up by their public prefix, then checked against the
    # SHA-256 of the whole key: keys are 256-bit random, so a fast hash is
    # enough (no password stretching needed) and the plaintext is never kept.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
