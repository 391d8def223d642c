"""ORM rows for schedules: a cron expression that fires a batch from a file or a selection of past jobs."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONDocument, utcnow


class Schedule(Base):
    __tablename__ = "schedules"
    __table_args__ = (
        # Exactly one source: an input file, or a saved job selection.
        CheckConstraint("(input_file_id IS NULL) <> (selection IS NULL)", name="one_source"),
        # Listing a tenant's schedules newest first with an (created_at, id) cursor.
        Index("ix_schedules_tenant_created_at", "tenant_id", "created_at", "id"),
        # Beat's scan for due schedules; paused ones have no next_run_at.
        Index("ix_schedules_next_run_at", "next_run_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "sched_<24 hex>"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    cron: Mapped[str] = mapped_column(String(255))
    timezone: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64))
    # Checked against the served model's revision when created and at each
    # firing: a schedule never runs on weights other than the ones it names.
    revision: Mapped[str | None] = mapped_column(String(255), default=None)
    # A plain id, no foreign key: a deleted file makes firings fail with a
    # reason (last_error), it does not delete the schedule.
    input_file_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # {model, task, status, since (seconds before the firing), metadata}
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, default=None)
    completion_window: Mapped[str] = mapped_column(String(16), default="24h")
    # Copied to each batch, with `schedule_id` added.
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONDocument, default=None)
    paused: Mapped[bool] = mapped_column(default=False)
    # The slot beat fires next; NULL while paused. Firing is a compare-and-set
    # on this column, so each slot fires once whatever the number of beats.
    next_run_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_batch_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # Why the last firing made no batch (file deleted, no job matched, model
    # no longer served); NULL after a firing that made one.
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
