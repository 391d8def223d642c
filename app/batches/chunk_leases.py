"""Batch chunks held by lease, as jobs are (app/jobs/claims.py). Functions flush; callers commit.

claim:     pending, or running with a lapsed lease -> running, held by me (attempts + 1),
           while the batch is in progress;
renew:     my running chunks' leases move forward, in one statement;
take over: running chunks of my models whose lease lapsed -> held by me.
The chunk's store (`progress.complete_chunk`) needs the attempt that claimed it.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.batches.progress import ClaimedChunk
from app.batches.records import Batch, BatchChunk
from app.db.base import utcnow

C = BatchChunk


def _lapsed(now: dt.datetime):
    return (C.status == "running") & (C.lease_expires_at.is_(None) | (C.lease_expires_at < now))


def _live_batch():
    return select(Batch.id).where(Batch.id == C.batch_id, Batch.status == "in_progress").exists()


def claim(session: Session, batch_id: str, index: int, worker: str, lease_s: float) -> ClaimedChunk | None:
    now = utcnow()
    connection = session.connection()
    if connection.dialect.driver == "psycopg":
        row = connection.exec_driver_sql(_CLAIM, {
            "batch_id": batch_id, "index": index, "worker": worker, "now": now,
            "expires": now + dt.timedelta(seconds=lease_s)}).one_or_none()
    else:
        row = session.execute(
            update(C).where(C.batch_id == batch_id, C.index == index, (C.status == "pending") | _lapsed(now),
                            _live_batch())
            .values(status="running", attempts=C.attempts + 1, started_at=now, worker=worker,
                    lease_expires_at=now + dt.timedelta(seconds=lease_s))
            .returning(C.model, C.attempts, C.lines, select(Batch.tenant_id).where(Batch.id == C.batch_id)
                       .scalar_subquery().label("tenant_id"))).one_or_none()
    if row is None:
        return None  # done, cancelled, held by a live worker, or its batch stopped: nothing to do
    return ClaimedChunk(batch_id, index, row.model, row.attempts, row.lines, row.tenant_id)


# claim's UPDATE as text on Postgres: built with the ORM it was compiled and its result
# processed anew for every chunk, on the thread that also claims the interactive jobs.
_CLAIM = """
UPDATE batch_chunks SET status = 'running', attempts = attempts + 1, started_at = %(now)s, worker = %(worker)s,
                        lease_expires_at = %(expires)s
WHERE batch_id = %(batch_id)s AND index = %(index)s
  AND (status = 'pending' OR (status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < %(now)s)))
  AND EXISTS (SELECT 1 FROM batches WHERE batches.id = batch_chunks.batch_id AND batches.status = 'in_progress')
RETURNING model, attempts, lines, (SELECT tenant_id FROM batches WHERE batches.id = batch_chunks.batch_id)
"""


def renew(session: Session, worker: str, lease_s: float) -> set[tuple[str, int]]:
    rows = session.execute(
        update(C).where(C.worker == worker, C.status == "running")
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
        .returning(C.batch_id, C.index)).all()
    return {(r.batch_id, r.index) for r in rows}


def take_over(session: Session, worker: str, models: Iterable[str], lease_s: float,
              limit: int = 50) -> list[ClaimedChunk]:
    now = utcnow()
    keys = session.execute(select(C.batch_id, C.index).where(_lapsed(now), C.model.in_(list(models)), _live_batch())
                           .limit(limit)).all()
    taken = []
    for batch_id, index in keys:
        claimed = claim(session, batch_id, index, worker, lease_s)
        if claimed is not None:
            taken.append(claimed)
    return taken
