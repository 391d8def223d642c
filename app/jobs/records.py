"""ORM rows for jobs and their results."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, JSONDocument, JSONVerbatim, utcnow

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status_known"
        ),
        # The sweeper and the reaper scan by status and age.
        Index("ix_jobs_status_created_at", "status", "created_at"),
        # Workers look for running jobs whose lease lapsed.
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        # Listing a tenant's jobs, newest first, with a (created_at, id) cursor.
        Index("ix_jobs_tenant_created_at", "tenant_id", "created_at", "id"),
        # One job per (tenant, Idempotency-Key); NULL keys never collide.
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )

    # uuid4: unguessable, so a job id is safe to hand out as a capability.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # The validated request, as the engine will run it. Deferred: a bulk job's
    # request can be tens of MB, and polling or listing never needs it.
    request: Mapped[dict[str, Any]] = mapped_column(JSONVerbatim, deferred=True)
    num_inputs: Mapped[int]
    # User key/values (`metadata` is reserved on declarative classes).
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONDocument, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    # SHA-256 of the canonical request: the same key with another body is a 409.
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    # Which events go to the webhook: "started", "completed".
    webhook_events: Mapped[list[str] | None] = mapped_column(JSONDocument, default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, default=None)
    prompt_tokens: Mapped[int | None] = mapped_column(default=None)
    # Each claim increments it; only the latest claimer may finish the job.
    attempts: Mapped[int] = mapped_column(default=0)
    # The lease: the worker (process incarnation) holding a running job, and
    # until when; it renews all its leases at once every few seconds.
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # NULL while no broker message is known to be out for the job.
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    result: Mapped[JobResult | None] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class JobResult(Base):
    """A finished job's response body, kept apart so listing jobs stays cheap."""

    __tablename__ = "job_results"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSONVerbatim)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="result")
