"""A batch's progress through the workers. Every step is a compare-and-set; callers commit, then send.

validating -> in_progress: the input is parsed once and cut as it is read;
    valid lines become chunks (one model per chunk), bad lines go straight
    to batch_outputs. Each filled chunk is stored (and sent) in a step of
    its own, so the first chunks run while the rest is parsed; the batch is
    in_progress from its first step, and chunks_total stays NULL until the
    last step stores it (only then can the batch finalize).
chunks: pending -> running (claim; attempts + 1) -> done. The first has POOLQ_BATCH_CHUNK_LINES
    lines, each next one twice as many as the one before, up to four times the first (chunk_size).
    A chunk is stored by one transaction: its output lines, `done` (only for
    the latest claim, so a redelivered or raced chunk never writes twice and
    a done chunk is never claimed again) and the batch's counters (one
    UPDATE ... SET completed = completed + n, which also serializes the
    chunks of a batch on its row).
window: at most `window` chunks of a batch have a message out at a time, so
    bulk work never fills a worker's prefetch or threads; each stored chunk
    sends the next one.
in_progress -> finalizing -> completed, cancelling -> cancelled, and
    -> expired: the output and error files name batch_outputs' lines
    (read in input order), written once, by the chunks.

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

from dataclasses import dataclass, field
from typing import Any, Iterator

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.batches.files import read_content
from app.batches.lines import (MAX_FILE_ERRORS, NO_JSON_LINE, NO_VALID_LINE, NOT_UTF8, decode, is_json, parse_lines,
                               request_lines)
from app.batches.records import Batch, BatchChunk, BatchOutput
from app.db.base import utcnow
from app.db.bulk import copy_rows
from app.served import ServedModels

ChunkKey = tuple[str, int, str]  # batch id, chunk index, model
OUTPUT_COLUMNS = ("batch_id", "line_no", "ok", "line")


@dataclass(frozen=True)
class Validated:
    send: list[ChunkKey]  # the chunks to send now
    failed: bool = False  # this call moved the batch to `failed` (a final state: its webhook is due)
    finalize: bool = False  # every chunk is stored already: the finalize step is due
    stop: bool = False  # nothing more to cut: the input is all in, or the batch left validation


@dataclass
class Step:
    """What validation read since its last step; one transaction stores it (store_step)."""
    chunks: list[dict[str, Any]] = field(default_factory=list)  # cut since the last step; indexes count from 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # bad lines since the last step
    lines: int = 0  # lines read so far: every bad line before this is in this step or an earlier one
    total: int = 0  # request lines in the file
    final: bool = False
    chunks_total: int = 0  # on the final step
    fatal: str | None = None  # on the final step: the file is not a batch's input (no chunk was cut)
    problems: list[dict[str, Any]] = field(default_factory=list)  # with fatal: the first bad lines


@dataclass(frozen=True)
class Source:
    content: bytes | None  # None: the input file was deleted
    endpoint: str
    input_file_id: str


def lock_batches(session: Session, batch_ids) -> None:
    """The first lock of any transaction that changes a batch or its chunks (see the module's lock order)."""
    ids = sorted(set(batch_ids))
    if not ids:
        return
    connection = session.connection()
    if connection.dialect.driver == "psycopg":
        # Taken for every chunk stored, claimed or cut: as the ORM's statement it cost ~0.2 ms
        # more of the caller's CPU than the statement itself.
        connection.exec_driver_sql(_LOCK_BATCHES, {"ids": ids})
    else:
        session.execute(select(Batch.id).where(Batch.id.in_(ids)).order_by(Batch.id).with_for_update())


_LOCK_BATCHES = "SELECT id FROM batches WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE"


def _cutting(status: str, chunks_total: int | None) -> bool:
    """validating, or in_progress with the input not all cut yet (chunks_total unknown)."""
    return status == "validating" or (status == "in_progress" and chunks_total is None)


def validation_source(session: Session, batch_id: str) -> Source | None:
    """The input to cut, or None if the batch is past validation (a duplicate or stale message)."""
    batch = session.get(Batch, batch_id)
    if batch is None or not _cutting(batch.status, batch.chunks_total):
        return None
    return Source(read_content(session, batch.input_file_id), batch.endpoint, batch.input_file_id)


# A chunk costs the same few transactions and messages whatever its size (cut and stored, sent,
# claimed, written back, acked: ~10 ms of CPU across the processes on a 2-vCPU host), so the
# later chunks of a big batch are bigger. The first stays small: the batch's first forward waits
# for it to be cut, stored, claimed and tokenized.
CHUNK_GROWTH = 4  # the biggest chunk, in first chunks


def chunk_size(index: int, chunk_lines: int) -> int:
    """Lines in chunk `index`: `chunk_lines` for the first, twice the one before for each next,
    up to CHUNK_GROWTH times the first (512, 1024, 2048, 2048, ...)."""
    return chunk_lines * min(1 << min(index, 30), CHUNK_GROWTH)


def cut(source: Source, served: ServedModels, max_items: int, chunk_lines: int) -> Iterator[Step]:
    """Parse the input and cut its valid lines into chunks (one model per chunk), a step each time a
    chunk fills, so the first chunks run while the rest of the file is parsed. Chunk sizes grow
    (chunk_size).

    Deterministic: a validation that resumes after a crash cuts the same chunks with the same
    indexes and finds the same bad lines, and store_step skips what an earlier run stored. A step
    is also due every `chunk_lines` bad lines once a valid line was seen (the sweeper reads a
    validation's progress from its steps). Before the first valid line nothing is stored: the
    file may still turn out to have none, and fail whole.
    """
    if source.content is None:
        yield Step(final=True, fatal=f"The input file {source.input_file_id} was deleted.")
        return
    text = decode(source.content)
    if text is None:
        yield Step(final=True, fatal=NOT_UTF8)
        return
    raws = request_lines(text)
    step, pending, problems = Step(total=len(raws)), {}, []
    count = json_lines = bad_since_step = 0
    for line in parse_lines(raws, source.endpoint, served, max_items):
        step.lines = line.no + 1
        if line.model is None:
            step.errors.append((line.no, line.error))
            bad_since_step += 1
            json_lines += is_json(line)
            if len(problems) < MAX_FILE_ERRORS:
                problems.append(line.problem)
        else:
            json_lines += 1
            part = pending.setdefault(line.model, [])
            part.append([line.no, line.custom_id, line.request])
            if len(part) == chunk_size(count, chunk_lines):
                step.chunks.append(_chunk(count, line.model, part))
                count += 1
                pending[line.model] = []
        if step.chunks or (bad_since_step >= chunk_lines and (count or any(pending.values()))):
            yield step
            step, bad_since_step = Step(lines=step.lines, total=step.total), 0
    for model, part in pending.items():
        if part:
            step.chunks.append(_chunk(count, model, part))
            count += 1
    step.final, step.chunks_total = True, count
    if not count:
        step.fatal = NO_JSON_LINE if not json_lines else NO_VALID_LINE
        step.problems = problems
    yield step


def _chunk(index: int, model: str, part: list) -> dict[str, Any]:
    return {"index": index, "model": model, "first_line": part[0][0], "last_line": part[-1][0],
            "num_lines": len(part), "status": "pending", "attempts": 0, "lines": part}


def store_step(session: Session, batch_id: str, step: Step, window: int) -> Validated:
    """Store one step of the cut: its new chunks and bad lines, the batch's counters (in_progress
    from the first step), and on the final step chunks_total; send the next chunks up to `window`.
    Stores only what no earlier run stored (chunks by index, bad lines by the lines it had read)."""
    lock_batches(session, [batch_id])
    batch = session.execute(select(Batch.status, Batch.chunks_total, Batch.validated_lines)
                            .where(Batch.id == batch_id)).one_or_none()
    if batch is None or not _cutting(batch.status, batch.chunks_total):
        return Validated([], stop=True)  # cancelled, expired, or cut by another run
    now = utcnow()
    stored = session.scalar(select(func.count()).select_from(BatchChunk).where(BatchChunk.batch_id == batch_id))
    if step.fatal and batch.status == "validating":
        problems = [{"code": "invalid_file", "message": step.fatal, "param": None, "line": None}]
        session.execute(update(Batch).where(Batch.id == batch_id).values(
            status="failed", failed_at=now, errors={"object": "list", "data": problems + step.problems}))
        return Validated([], failed=True, stop=True)
    chunks = [{**chunk, "batch_id": batch_id} for chunk in step.chunks if chunk["index"] >= stored]
    if chunks:
        session.execute(insert(BatchChunk), chunks)
    errors = [(batch_id, no, False, line) for no, line in step.errors if no >= batch.validated_lines]
    copy_rows(session, BatchOutput.__table__, OUTPUT_COLUMNS, errors)
    values: dict[str, Any] = {"total": step.total, "failed": Batch.failed + len(errors), "validated_at": now,
                              "validated_lines": max(step.lines, batch.validated_lines)}
    if batch.status == "validating":
        values.update(status="in_progress", in_progress_at=now)
    if step.fatal:
        # Resumed after its input file was deleted: what was cut runs, the rest cannot.
        values["chunks_total"] = stored + len(chunks)
        values["errors"] = {"object": "list", "data": [
            {"code": "invalid_file", "message": f"{step.fatal} Lines from {batch.validated_lines + 1} on were not run.",
             "param": None, "line": None}]}
    elif step.final:
        values["chunks_total"] = step.chunks_total
    row = session.execute(update(Batch).where(Batch.id == batch_id).values(**values)
                          .returning(Batch.chunks_done, Batch.chunks_total)).one()
    if row.chunks_total is not None and row.chunks_done >= row.chunks_total:
        return Validated([], finalize=True, stop=True)  # the last chunks were stored before the cut ended
    return Validated(pump(session, batch_id, window), stop=step.final)


def pump(session: Session, batch_id: str, window: int) -> list[ChunkKey]:
    """Mark the next chunks as sent, up to `window` in flight; the caller sends them after commit.
    The caller holds the batch's lock (lock_batches): one pump at a time."""
    connection = session.connection()
    if connection.dialect.driver == "psycopg":
        rows = connection.exec_driver_sql(_PUMP, {"batch_id": batch_id, "window": window, "now": utcnow()}).all()
        return [(batch_id, r.index, r.model) for r in sorted(rows)]
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


# pump's three statements as one, on Postgres (the caller holds the batch's lock, so the count
# and the choice see every earlier holder's chunks; the ORM form built and compiled each of them
# anew on the worker's thread, for every chunk stored).
_PUMP = """
WITH room AS (
    SELECT %(window)s - count(*) AS n FROM batch_chunks
    WHERE batch_id = %(batch_id)s AND (status = 'running' OR (status = 'pending' AND sent_at IS NOT NULL))
), next AS (
    SELECT index FROM batch_chunks
    WHERE batch_id = %(batch_id)s AND status = 'pending' AND sent_at IS NULL
    ORDER BY index LIMIT GREATEST((SELECT n FROM room), 0)
)
UPDATE batch_chunks SET sent_at = %(now)s FROM next
WHERE batch_chunks.batch_id = %(batch_id)s AND batch_chunks.index = next.index
RETURNING batch_chunks.index, batch_chunks.model
"""


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
    tenant_id: Any  # its batch's tenant (the fair share's key)


@dataclass(frozen=True)
class Stored:
    send: list[ChunkKey]
    finalize: bool


def complete_chunk(session: Session, claimed: ClaimedChunk, outputs: list[tuple[int, bool, str]],
                   window: int) -> Stored | None:
    """Store a chunk's lines, `done` and the counters at once; None if another attempt owns it."""
    lock_batches(session, [claimed.batch_id])
    connection = session.connection()
    if connection.dialect.driver == "psycopg":
        row = _store_in_one_statement(connection, claimed, outputs)
        if row is None:
            return None
    else:
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
    if row.status == "cancelling" or (row.status == "in_progress" and row.chunks_total is not None
                                      and row.chunks_done >= row.chunks_total):
        return Stored([], True)
    return Stored(pump(session, claimed.batch_id, window) if row.status == "in_progress" else [], False)


# On Postgres a chunk's store is one statement after the batch's lock: `done` for the attempt
# that claimed it, its output lines and the batch's counters, all or nothing: where the chunk is
# not this attempt's any more, `done` is empty and so is everything joined to it. The lines go
# as one text, a newline apart, split by the server: an output line is a JSONL line, with no
# newline of its own (the output file joins them the same way). As a text[] in psycopg's binary
# format each line cost a Python loop's turn: 0.6 ms of a 512-line chunk's CPU against 0.25.
_STORE_CHUNK = """
WITH done AS (
    UPDATE batch_chunks SET status = 'done', finished_at = %(now)s
    WHERE batch_id = %(batch_id)s AND index = %(index)s AND status = 'running' AND attempts = %(attempt)s
    RETURNING index
), stored AS (
    INSERT INTO batch_outputs (batch_id, line_no, ok, line)
    SELECT %(batch_id)s, o.line_no, o.ok, o.line
    FROM done, unnest(string_to_array(%(line_nos)s, ',')::integer[], string_to_array(%(oks)s, ',')::boolean[],
                      string_to_array(%(lines)s, E'\\n')) AS o(line_no, ok, line)
)
UPDATE batches SET completed = completed + %(good)s, failed = failed + %(bad)s, chunks_done = chunks_done + 1
FROM done WHERE batches.id = %(batch_id)s
RETURNING batches.status, batches.chunks_done, batches.chunks_total
"""


def _store_in_one_statement(connection, claimed: ClaimedChunk, outputs: list[tuple[int, bool, str]]):
    line_nos, oks, lines = zip(*outputs) if outputs else ((), (), ())
    good = sum(oks)
    return connection.exec_driver_sql(_STORE_CHUNK, {
        "batch_id": claimed.batch_id, "index": claimed.index, "attempt": claimed.attempt, "now": utcnow(),
        # NULL for none: string_to_array('') is an empty array, but so would be one empty line
        "line_nos": ",".join(map(str, line_nos)) or None, "oks": ",".join("t" if ok else "f" for ok in oks) or None,
        "lines": "\n".join(lines) if lines else None, "good": good, "bad": len(oks) - good}).one_or_none()
