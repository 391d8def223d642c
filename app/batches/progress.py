"""A batch's progress through the workers. Every step is a compare-and-set; callers commit, then send.

validating -> in_progress: the input is parsed once; valid lines become
    chunks (one model per chunk), bad lines go straight to batch_outputs.
chunks: pending -> running (claim; attempts + 1) -> done. A chunk is stored
    by one transaction: its output lines (one bulk INSERT), `done` (only for
    the latest claim, so a redelivered or raced chunk never writes twice and
    a done chunk is never claimed again) and the batch's counters (one
    UPDATE ... SET completed = completed + n, which also serializes the
    chunks of a batch on its row).
window: at most `window` chunks of a batch have a message out at a time, so
    bulk work never fills a worker's prefetch or threads; each stored chunk
    sends the next one.
in_progress -> finalizing -> completed, cancelling -> cancelled, and
    -> expired: the output and error files are written from batch_outputs
    in input order.

Lock order, for every transaction that touches a batch and its chunks:
the batch row FOR UPDATE first (`lock_batches`, by id when there are
several), then its chunks, then rows that reference it (output lines,
files, deliveries). Two chunks of one batch completing at once used to
deadlock: each took the batch row's key-share lock (the outputs' foreign
key), then the counter UPDATE, then pump's FOR UPDATE, which waits for
the other's key-share. Locking the batch first makes them queue instead.
A claim (one chunk row, one statement) holds nothing else, so it cannot
close a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.batches.files import read_content
from app.batches.lines import parse_file
from app.batches.records import Batch, BatchChunk, BatchOutput
from app.db.base import utcnow
from app.db.bulk import copy_rows
from app.served import ServedModels

ChunkKey = tuple[str, int, str]  # batch id, chunk index, model
OUTPUT_COLUMNS = ("batch_id", "line_no", "ok", "line")


@dataclass(frozen=True)
class Validated:
    send: list[ChunkKey]  # the chunks to send first
    failed: bool = False  # this call moved the batch to `failed` (a final state: its webhook is due)


def lock_batches(session: Session, batch_ids) -> None:
    """The first lock of any transaction that changes a batch or its chunks (see the module's lock order)."""
    ids = sorted(set(batch_ids))
    if ids:
        session.execute(select(Batch.id).where(Batch.id.in_(ids)).order_by(Batch.id).with_for_update())


def validate(session: Session, batch_id: str, served: ServedModels, max_items: int, chunk_lines: int,
             window: int) -> Validated:
    """Parse the input and cut it into chunks. A no-op unless validating."""
    lock_batches(session, [batch_id])
    batch = session.get(Batch, batch_id)
    if batch is None or batch.status != "validating":
        return Validated([])
    content = read_content(session, batch.input_file_id)
    parsed = parse_file(content or b"", batch.endpoint, served, max_items)
    if content is None:
        parsed.fatal = f"The input file {batch.input_file_id} was deleted."
    now = utcnow()
    target = "failed" if parsed.fatal else "in_progress"
    # The compare-and-set first: a duplicate validation (or a cancel) that got
    # here earlier leaves nothing for this one to do.
    if not session.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "validating")
                           .values(status=target)).rowcount:
        return Validated([])
    if parsed.fatal:
        problems = [{"code": "invalid_file", "message": parsed.fatal, "param": None, "line": None}]
        session.execute(update(Batch).where(Batch.id == batch_id).values(
            failed_at=now, errors={"object": "list", "data": problems + parsed.problems}))
        return Validated([], failed=True)
    by_model: dict[str, list] = {}
    for line_no, custom_id, model, request in parsed.valid:
        by_model.setdefault(model, []).append([line_no, custom_id, request])
    chunks = []
    for model, lines in by_model.items():
        for start in range(0, len(lines), chunk_lines):
            part = lines[start:start + chunk_lines]
            chunks.append({"batch_id": batch_id, "index": len(chunks), "model": model, "first_line": part[0][0],
                           "last_line": part[-1][0], "num_lines": len(part), "status": "pending", "attempts": 0,
                           "lines": part})
    session.execute(insert(BatchChunk), chunks)
    copy_rows(session, BatchOutput.__table__, OUTPUT_COLUMNS,
              [(batch_id, no, False, line) for no, line in parsed.errors])
    session.execute(update(Batch).where(Batch.id == batch_id).values(
        in_progress_at=now, total=parsed.total, failed=len(parsed.errors), chunks_total=len(chunks)))
    return Validated(pump(session, batch_id, window))


def pump(session: Session, batch_id: str, window: int) -> list[ChunkKey]:
    """Mark the next chunks as sent, up to `window` in flight; the caller sends them after commit."""
    lock_batches(session, [batch_id])  # one pump at a time (a no-op if the caller holds it already)
    inflight = session.scalar(select(func.count()).select_from(BatchChunk).where(
        BatchChunk.batch_id == batch_id,
        or_(BatchChunk.status == "running", (BatchChunk.status == "pending") & BatchChunk.sent_at.is_not(None))))
    room = window - (inflight or 0)
    if room <= 0:
        return []
    rows = session.execute(select(BatchChunk.index, BatchChunk.model).where(
        BatchChunk.batch_id == batch_id, BatchChunk.status == "pending", BatchChunk.sent_at.is_(None))
        .order_by(BatchChunk.index).limit(room)).all()
    if rows:
        session.execute(update(BatchChunk).where(BatchChunk.batch_id == batch_id,
                                                 BatchChunk.index.in_([r.index for r in rows]))
                        .values(sent_at=utcnow()))
    return [(batch_id, r.index, r.model) for r in rows]


def mark_unsent(session: Session, keys: list[ChunkKey]) -> None:
    lock_batches(session, [key[0] for key in keys])
    for batch_id, index, _ in keys:
        session.execute(update(BatchChunk).where(BatchChunk.batch_id == batch_id, BatchChunk.index == index,
                                                 BatchChunk.status == "pending").values(sent_at=None))


@dataclass(frozen=True)
class ClaimedChunk:
    batch_id: str
    index: int
    model: str
    attempt: int
    lines: list[Any]


@dataclass(frozen=True)
class Stored:
    send: list[ChunkKey]
    finalize: bool


def complete_chunk(session: Session, claimed: ClaimedChunk, outputs: list[tuple[int, bool, str]],
                   window: int) -> Stored | None:
    """Store a chunk's lines, `done` and the counters at once; None if another attempt owns it."""
    lock_batches(session, [claimed.batch_id])
    if not session.execute(
            update(BatchChunk)
            .where(BatchChunk.batch_id == claimed.batch_id, BatchChunk.index == claimed.index,
                   BatchChunk.status == "running", BatchChunk.attempts == claimed.attempt)
            .values(status="done", finished_at=utcnow())).rowcount:
        return None
    copy_rows(session, BatchOutput.__table__, OUTPUT_COLUMNS,
              [(claimed.batch_id, no, ok, line) for no, ok, line in outputs])
    ok = sum(1 for _, good, _ in outputs if good)
    row = session.execute(
        update(Batch).where(Batch.id == claimed.batch_id)
        .values(completed=Batch.completed + ok, failed=Batch.failed + (len(outputs) - ok),
                chunks_done=Batch.chunks_done + 1)
        .returning(Batch.status, Batch.chunks_done, Batch.chunks_total)).one()
    if row.status == "cancelling" or (row.status == "in_progress" and row.chunks_done >= row.chunks_total):
        return Stored([], True)
    return Stored(pump(session, claimed.batch_id, window) if row.status == "in_progress" else [], False)
