"""ORM rows for uploaded files, batches, their chunks and their output lines."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONDocument, JSONVerbatim, utcnow

BATCH_STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                  "cancelled")
CHUNK_STATUSES = ("pending", "running", "done", "cancelled")


class File(Base):
    """An uploaded batch input, or a batch's output or error file. The bytes live here, in the database."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created_at", "tenant_id", "created_at", "id"),
                      Index("ix_files_expires_at", "expires_at"),
                      Index("ix_files_batch_id", "batch_id"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "file-<24 hex>"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    size: Mapped[int]
    # Deferred: listing and describing files never loads their content. An upload's bytes; None
    # for a batch's output or error file, whose lines stay where the chunks stored them
    # (batch_outputs of `batch_id`, ok or not as `batch_ok`) and are joined as it is read: a
    # batch's end writes no second copy of its output (47 MB for 100,000 lines).
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), default=None)
    batch_ok: Mapped[bool | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Uploads expire (OpenAI's `expires_after`; by default after
    # POOLQ_FILE_EXPIRY_S); None: kept until deleted. The files poolq writes
    # for a batch go with the batch instead (its retention).
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint("status IN ('validating', 'failed', 'in_progress', 'finalizing', 'completed', 'expired', "
                        "'cancelling', 'cancelled')", name="status_known"),
        # Listing a tenant's batches newest first with an (created_at, id) cursor.
        Index("ix_batches_tenant_created_at", "tenant_id", "created_at", "id"),
        # The sweeper and the expiry task scan unfinished batches.
        Index("ix_batches_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "batch_<24 hex>"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    endpoint: Mapped[str] = mapped_column(String(32))
    # Plain ids, no foreign keys: a file deleted later leaves the batch describable.
    input_file_id: Mapped[str] = mapped_column(String(64))
    output_file_id: Mapped[str | None] = mapped_column(String(64), default=None)
    error_file_id: Mapped[str | None] = mapped_column(String(64), default=None)
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="validating")
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONDocument, default=None)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, default=None)
    # Like a job's: the endpoint, and which final states it is told of
    # ("completed", "failed", "expired", "cancelled").
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSONDocument, default=None)
    total: Mapped[int] = mapped_column(default=0)
    completed: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    # chunks_done is bumped in the transaction that stores a chunk's lines; the
    # one that makes it equal chunks_total triggers the finalize step.
    # chunks_total is NULL while validation is still cutting the input (the
    # batch may already be in_progress, its first chunks running), and
    # validated_at is when validation last stored a step (the sweeper's sign
    # that it is alive), validated_lines how many input lines its steps cover
    # (a validation run again after a crash stores only the bad lines after).
    chunks_total: Mapped[int | None] = mapped_column(default=None)
    chunks_done: Mapped[int] = mapped_column(default=0)
    validated_lines: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    in_progress_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    validated_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finalizing_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    completed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    failed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    expired_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    cancelling_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class BatchChunk(Base):
    """A slice of one model's valid lines: the unit a bulk task claims, runs and stores at once."""

    __tablename__ = "batch_chunks"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'done', 'cancelled')", name="status_known"),
        Index("ix_batch_chunks_status_sent_at", "status", "sent_at"),
        Index("ix_batch_chunks_status_lease_expires_at", "status", "lease_expires_at"),
    )

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    first_line: Mapped[int]
    last_line: Mapped[int]
    num_lines: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Each claim increments it; only the latest claimer may store the chunk.
    attempts: Mapped[int] = mapped_column(default=0)
    # [[line_no, custom_id, validated request], ...]: the chunk carries its own
    # input, so a task reads one row, never the whole input file.
    lines: Mapped[list[Any]] = mapped_column(JSONVerbatim, deferred=True)
    # NULL while no broker message is out for the chunk (not yet in the window).
    sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The lease, as on jobs: the worker running the chunk and until when.
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class BatchOutput(Base):
    """One output line, serialized as it goes into the output or error file.

    The primary key (batch_id, line_no) makes a duplicate line impossible even
    if the compare-and-set in front of the insert were bypassed.
    """

    __tablename__ = "batch_outputs"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line_no: Mapped[int] = mapped_column(primary_key=True)
    ok: Mapped[bool]
    line: Mapped[str] = mapped_column(Text)
