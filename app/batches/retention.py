"""Finished batches go the way of finished jobs: deleted after the retention.

A batch in a final state longer than POOLQ_JOB_RETENTION_S is deleted with
its chunks, its output lines, its webhook deliveries (all ON DELETE CASCADE)
and the output and error files poolq wrote for it. Uploaded files expire at
their `expires_at` (see `expire_files`). An output file no batch refers to
is deleted by `delete_orphan_files`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from app.batches.records import Batch, File
from app.schedules.records import Schedule
from app.db.base import utcnow

FINAL = ("completed", "failed", "expired", "cancelled")


def expire_finished_batches(session: Session, retention_s: int, batch: int = 200) -> int:
    if retention_s <= 0:
        return 0
    cutoff = utcnow() - dt.timedelta(seconds=retention_s)
    ended_at = func.coalesce(Batch.completed_at, Batch.failed_at, Batch.expired_at, Batch.cancelled_at)
    rows = session.execute(select(Batch.id, Batch.output_file_id, Batch.error_file_id)
                           .where(Batch.status.in_(FINAL), ended_at < cutoff).limit(batch)).all()
    if not rows:
        return 0
    written = [file_id for row in rows for file_id in (row.output_file_id, row.error_file_id) if file_id]
    if written:
        session.execute(delete(File).where(File.id.in_(written)))
    session.execute(delete(Batch).where(Batch.id.in_([row.id for row in rows])))
    return len(rows)


def expire_files(session: Session, batch: int = 200) -> int:
    """Delete uploads past their `expires_at`, except those still in use: the
    input of a batch that has not ended, or of a schedule (a nightly run would
    otherwise break a month after its file was uploaded)."""
    busy_batches = select(Batch.input_file_id).where(Batch.status.not_in(FINAL))
    scheduled = select(Schedule.input_file_id).where(Schedule.input_file_id.is_not(None))
    ids = list(session.scalars(
        select(File.id).where(File.expires_at < utcnow(), File.id.not_in(busy_batches), File.id.not_in(scheduled))
        .limit(batch)))
    if ids:
        session.execute(delete(File).where(File.id.in_(ids)))
    return len(ids)


def delete_orphan_files(session: Session, batch: int = 200) -> int:
    """Delete output files ("batch_output") that no batch refers to.

    A closer writes its files and points the batch at them in one
    transaction, and only after winning the batch's lock (closing.close), so
    a committed output file is referenced unless something went wrong: a
    closer from before that rule, a batch row deleted without its files, a
    file created by hand. Uncommitted files are invisible here, so a close in
    progress is never raced. Uploads ("batch") belong to their tenant and
    expire by `expire_files`, never here.
    """
    # Two NOT EXISTS rather than one with an OR: each plans as a hash anti-join.
    as_output = exists().where(Batch.output_file_id == File.id)
    as_error = exists().where(Batch.error_file_id == File.id)
    ids = list(session.scalars(select(File.id).where(File.purpose == "batch_output", ~as_output, ~as_error)
                               .limit(batch)))
    if ids:
        session.execute(delete(File).where(File.id.in_(ids)))
    return len(ids)
