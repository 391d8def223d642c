"""Ending a batch: finalize, cancel, expire, and the sweeper's view of what is overdue.

The output and error files are batch_outputs' lines in line order, so they
come out in input order whatever order the chunks ran in; a file names its
lines rather than copying them (files.read_content joins them). A batch that
ends early (cancelled, expired) gets files with the lines it finished, as
OpenAI does.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import LargeBinary, cast, exists, func, select, update
from sqlalchemy.orm import Session

from app.batches.files import new_file_id
from app.batches.progress import lock_batches
from app.batches.records import Batch, BatchChunk, BatchOutput, File
from app.db.base import utcnow


def start_closing(session: Session, batch_id: str) -> str | None:
    """in_progress (all chunks stored) -> finalizing; the final status to close with, or None if not due."""
    lock_batches(session, [batch_id])
    now = utcnow()
    if session.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "in_progress",
                                           Batch.chunks_done >= Batch.chunks_total)
                       .values(status="finalizing", finalizing_at=now)).rowcount:
        return "completed"
    status = session.scalar(select(Batch.status).where(Batch.id == batch_id))
    if status == "finalizing":
        return "completed"  # a finalize that died half-way: do it again
    if status == "cancelling":
        running = session.scalar(select(func.count()).select_from(BatchChunk).where(
            BatchChunk.batch_id == batch_id, BatchChunk.status == "running"))
        if running:
            return None  # the running chunk's completion asks again
        _stop_chunks(session, batch_id, ("pending",))
        return "cancelled"
    return None


def close(session: Session, batch_id: str, status: str) -> bool:
    """finalizing -> completed or cancelling -> cancelled, with the files; False if another closer won.

    The batch is locked and its status checked before any file is written:
    a losing closer writes nothing, so it leaves no orphan file behind.
    """
    source = {"completed": "finalizing", "cancelled": "cancelling"}[status]
    lock_batches(session, [batch_id])
    if session.scalar(select(Batch.status).where(Batch.id == batch_id)) != source:
        return False
    output_id, error_id = _write_files(session, batch_id)
    return bool(session.execute(
        update(Batch).where(Batch.id == batch_id, Batch.status == source)
        .values(status=status, output_file_id=output_id, error_file_id=error_id,
                **{f"{status}_at": utcnow()})).rowcount)


def expire(session: Session, batch_id: str) -> bool:
    """Past its completion window: stop every unfinished chunk (a running one's
    late result is refused by its compare-and-set) and keep what finished."""
    lock_batches(session, [batch_id])
    if not session.execute(update(Batch).where(Batch.id == batch_id,
                                               Batch.status.in_(("validating", "in_progress")))
                           .values(status="expired", expired_at=utcnow())).rowcount:
        return False
    _stop_chunks(session, batch_id, ("pending", "running"))
    output_id, error_id = _write_files(session, batch_id)
    session.execute(update(Batch).where(Batch.id == batch_id)
                    .values(output_file_id=output_id, error_file_id=error_id))
    return True


def expired_batches(session: Session, limit: int = 100) -> list[str]:
    return list(session.scalars(select(Batch.id).where(Batch.status.in_(("validating", "in_progress")),
                                                       Batch.expires_at < utcnow()).limit(limit)))


def _stop_chunks(session: Session, batch_id: str, statuses: tuple[str, ...]) -> None:
    session.execute(update(BatchChunk).where(BatchChunk.batch_id == batch_id, BatchChunk.status.in_(statuses))
                    .values(status="cancelled", finished_at=utcnow()))


def _write_files(session: Session, batch_id: str) -> tuple[str | None, str | None]:
    """The output and the error file (None where no line): rows that name the batch's lines,
    whose bytes are those lines joined as the file is read (files.read_content)."""
    batch = session.get(Batch, batch_id)
    sizes = dict(session.execute(select(BatchOutput.ok, func.sum(_byte_length(session) + 1))
                                 .where(BatchOutput.batch_id == batch_id).group_by(BatchOutput.ok)).all())
    ids = []
    for ok, kind in ((True, "output"), (False, "error")):
        if not sizes.get(ok):
            ids.append(None)
            continue
        now = utcnow()
        file = File(id=new_file_id(), tenant_id=batch.tenant_id, filename=f"{batch_id}_{kind}.jsonl",
                    purpose="batch_output", size=int(sizes[ok]), content=None, batch_id=batch_id, batch_ok=ok,
                    created_at=now)
        session.add(file)
        ids.append(file.id)
    session.flush()
    return ids[0], ids[1]


def _byte_length(session: Session):
    """A line's length in UTF-8 bytes (each line is followed by a newline in the file)."""
    if session.connection().dialect.name == "postgresql":
        return func.octet_length(BatchOutput.line)
    return func.length(cast(BatchOutput.line, LargeBinary))  # SQLite: a blob's length is its bytes


def overdue(session: Session, requeue_after_s: int, limit: int = 500):
    """What the sweeper must (re)send: (validations, chunks, pumps, finalizations).

    - validating batches whose message is presumed lost, and batches whose
      validation stopped part-way (in_progress, not all cut, no step lately);
    - chunks sent long ago and still pending (a running chunk is held by a
      lease, and a worker takes it over when the lease lapses);
    - in_progress batches with nothing in flight but chunks left (a send
      failed, or the process died between commit and send);
    - batches whose finalize is due: all chunks stored, stuck finalizing,
      or cancelling with no chunk running.
    """
    now = utcnow()
    stale_send = now - dt.timedelta(seconds=requeue_after_s)
    # A validation still cutting stores a step at least every chunk's worth of lines read.
    validations = list(session.scalars(select(Batch.id).where(
        ((Batch.status == "validating") & (Batch.created_at < stale_send))
        | ((Batch.status == "in_progress") & Batch.chunks_total.is_(None) & (Batch.validated_at < stale_send)))
        .limit(limit)))
    chunks = session.execute(select(BatchChunk.batch_id, BatchChunk.index, BatchChunk.model).where(
        (BatchChunk.status == "pending") & (BatchChunk.sent_at < stale_send)).limit(limit)).all()
    inflight = exists().where(BatchChunk.batch_id == Batch.id, (BatchChunk.status == "running")
                              | ((BatchChunk.status == "pending") & BatchChunk.sent_at.is_not(None)))
    # By id: the sweeper locks these batches in this order (progress.lock_batches' rule).
    pumps = list(session.scalars(select(Batch.id).where(Batch.status == "in_progress",
                                                        Batch.chunks_done < Batch.chunks_total,
                                                        ~inflight).order_by(Batch.id).limit(limit)))
    running = exists().where(BatchChunk.batch_id == Batch.id, BatchChunk.status == "running")
    finals = list(session.scalars(select(Batch.id).where(
        ((Batch.status == "in_progress") & (Batch.chunks_done >= Batch.chunks_total))
        | ((Batch.status == "finalizing") & (Batch.finalizing_at < stale_send))
        | ((Batch.status == "cancelling") & ~running)).limit(limit)))
    return validations, [tuple(c) for c in chunks], pumps, finals


def resend_chunks(session: Session, keys: list) -> None:
    """Overdue chunks back to pending, marked as sent now; the caller sends after commit."""
    lock_batches(session, [key[0] for key in keys])
    for batch_id, index, _ in keys:
        session.execute(update(BatchChunk).where(BatchChunk.batch_id == batch_id, BatchChunk.index == index,
                                                 BatchChunk.status.in_(("pending", "running")))
                        .values(status="pending", sent_at=utcnow()))
