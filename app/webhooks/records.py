"""ORM rows for webhook deliveries, their attempts, and endpoints disabled by a 410.

The delivery row is the truth about what remains to be sent: a pending row
with `next_attempt_at` is delivered by whoever finds it due (its broker
message, or the sweeper when that message is lost), so a delivery survives a
worker restart or a broker outage.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, utcnow

DELIVERY_STATUSES = ("pending", "succeeded", "failed", "disabled")


class WebhookDelivery(Base):
    """One event for one endpoint; its id is the `webhook-id` on every attempt.

    The event is about a job or a batch: exactly one of `job_id` and
    `batch_id` is set. Both cascade, so deleting the subject drops its deliveries.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'succeeded', 'failed', 'disabled')", name="status_known"),
        CheckConstraint("(job_id IS NULL) <> (batch_id IS NULL)", name="one_subject"),
        # The sweeper scans pending rows by due time.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True,
                                                     default=None)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True,
                                                 default=None)
    event: Mapped[str] = mapped_column(String(32))  # "job.started", "job.completed", "batch.completed", ...
    url: Mapped[str] = mapped_column(Text)
    # The exact JSON text that is signed and sent, so every attempt is byte-identical.
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Attempts over the delivery's life, and within the current cycle (a
    # redelivery starts a new cycle on the retry schedule).
    attempts: Mapped[int] = mapped_column(default=0)
    cycle_attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # When a broker message for the next attempt was sent; None: none is in
    # flight, and the sweeper sends one once the attempt is due.
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        back_populates="delivery", order_by="WebhookAttempt.number", cascade="all, delete-orphan",
        passive_deletes=True)

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.id.hex}"


class WebhookAttempt(Base):
    """One HTTP request to the endpoint, whatever came of it."""

    __tablename__ = "webhook_attempts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    attempted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(default=None)
    latency_ms: Mapped[int | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(String(512), default=None)
    # Only a prefix of what the endpoint answered: enough to debug, bounded in size.
    response_body: Mapped[str | None] = mapped_column(Text, default=None)

    delivery: Mapped[WebhookDelivery] = relationship(back_populates="attempt_log")


class DisabledEndpoint(Base):
    """An endpoint that answered 410 Gone: no more deliveries to it for that tenant."""

    __tablename__ = "webhook_disabled_endpoints"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(Text, primary_key=True)
    disabled_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
