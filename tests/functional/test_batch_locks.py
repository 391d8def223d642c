"""Many chunks of one batch completing at once: no deadlock, exact counters, one finalize, no orphan file.

The service functions run in threads, each with its own session on the real
Postgres, as concurrent worker tasks would; no broker or engine is involved.
The app here uses a namespace of its own, so the suite's shared worker never
sees this batch's messages.
"""

from __future__ import annotations

import io
import json
import threading

import pytest
from sqlalchemy import func, select

from app import create_app
from app.batches import chunk_leases, closing, progress
from app.batches.records import Batch, BatchChunk, BatchOutput, File
from app.batches.retention import delete_orphan_files
from app.config import Settings
from tests_support import chunks_for, validate_whole

LINES = 2 + 4 + 8 * 22
CHUNK = 2  # 24 chunks: 2 lines, 4, then 8 each
WINDOW = 4


@pytest.fixture
def api(deployment_env, namespace, api_keys):
    env = {**deployment_env, "POOLQ_NAMESPACE": f"{namespace}locks.", "POOLQ_BATCH_CHUNK_LINES": str(CHUNK),
           "POOLQ_MODELS": deployment_env["POOLQ_MODELS"].split(",")[0]}
    app = create_app(Settings.from_env(env))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    client.poolq = app.extensions["poolq"]
    return client


def new_batch(api, db) -> str:
    content = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/classify",
                                  "body": {"model": "tiny", "input": f"line {i}"}}) + "\n"
                      for i in range(LINES)).encode()
    file_id = api.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(content), "in.jsonl")}).json["id"]
    batch_id = api.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/classify"}).json["id"]
    with db() as session:
        validate_whole(session, batch_id, api.poolq.served, 1000, CHUNK, WINDOW)
        session.commit()
    return batch_id


def run_at_once(count: int, work) -> list[BaseException]:
    """`work(i)` in `count` threads released together; the exceptions they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - every failure is the test's business
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread is stuck: a lock wait that never ends"
    return errors


def test_chunks_of_one_batch_complete_at_once_without_deadlock(api, db):
    for _ in range(3):  # the old lock order deadlocked in about half of such runs; three make it near certain
        batch_id = new_batch(api, db)
        chunks = chunks_for(LINES, CHUNK)
        assert chunks == 24
        claimed = []
        for index in range(chunks):
            with db() as session:
                claimed.append(chunk_leases.claim(session, batch_id, index, "test", lease_s=300))
                session.commit()
        stored: list[progress.Stored] = []

        def complete(i: int) -> None:
            chunk = claimed[i]
            outputs = [(line_no, line_no % 5 != 0, json.dumps({"custom_id": cid})) for line_no, cid, _ in chunk.lines]
            with db() as session:
                result = progress.complete_chunk(session, chunk, outputs, WINDOW)
                session.commit()
            stored.append(result)

        errors = run_at_once(chunks, complete)
        assert errors == [], errors  # a deadlock shows up here as psycopg's DeadlockDetected
        with db() as session:
            batch = session.get(Batch, batch_id)
            failed = sum(1 for n in range(LINES) if n % 5 == 0)
            assert (batch.completed, batch.failed, batch.chunks_done) == (LINES - failed, failed, chunks)
            assert session.scalar(select(func.count()).select_from(BatchOutput)
                                  .where(BatchOutput.batch_id == batch_id)) == LINES
            assert set(session.scalars(select(BatchChunk.status).where(BatchChunk.batch_id == batch_id))) == {"done"}
        assert all(s is not None for s in stored)
        assert sum(s.finalize for s in stored) == 1  # exactly the last one asks for the finalize
        close_concurrently(db, batch_id)


def close_concurrently(db, batch_id: str) -> None:
    """Two finalizes at once: one closes the batch, the loser writes no file."""
    before = count_files(db)
    with db() as session:
        assert closing.start_closing(session, batch_id) == "completed"
        session.commit()
    won: list[bool] = []

    def close(_: int) -> None:
        with db() as session:
            won.append(closing.close(session, batch_id, "completed"))
            session.commit()

    assert run_at_once(3, close) == []
    assert sorted(won) == [False, False, True]
    with db() as session:
        batch = session.get(Batch, batch_id)
        assert batch.status == "completed" and batch.output_file_id and batch.error_file_id
    assert count_files(db) == before + 2  # the winner's output and error files, nothing else


def count_files(db) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(File).where(File.purpose == "batch_output"))


def test_the_sweeper_removes_output_files_no_batch_refers_to(api, db):
    from app.batches.files import create_file

    batch_id = new_batch(api, db)
    with db() as session:
        tenant_id = session.get(Batch, batch_id).tenant_id
        orphan = create_file(session, tenant_id, "lost_output.jsonl", "batch_output", b"{}\n").id
        upload = create_file(session, tenant_id, "mine.jsonl", "batch", b"{}\n").id
        session.commit()
    with db() as session:
        assert delete_orphan_files(session) >= 1
        session.commit()
    with db() as session:
        assert session.get(File, orphan) is None
        assert session.get(File, upload) is not None  # uploads are the tenant's, whatever refers to them
        referenced = session.scalars(select(Batch.output_file_id).where(Batch.output_file_id.is_not(None))).all()
        assert all(session.get(File, file_id) is not None for file_id in referenced)


def test_a_chunk_s_output_rows_go_to_postgres_in_one_statement_and_a_second_store_adds_none(api, db):
    """One statement with `done` and the counters, the rows as arrays (not a statement per row
    or a 2,000-parameter INSERT): every row arrives; a second store of the chunk writes nothing;
    a duplicate line fails a COPY of rows (validation's bad lines, app/db/bulk.py) whole."""
    from sqlalchemy import event
    from sqlalchemy.exc import IntegrityError

    from app.db.bulk import copy_rows

    batch_id = new_batch(api, db)
    with db() as session:
        chunk = chunk_leases.claim(session, batch_id, 0, "test", lease_s=300)
        session.commit()
    outputs = [(line_no, True, json.dumps({"custom_id": cid})) for line_no, cid, _ in chunk.lines]
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, executemany))

    engine = db.kw["bind"]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        with db() as session:
            assert progress.complete_chunk(session, chunk, outputs, WINDOW) is not None
            session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(outputs) == CHUNK > 1
    writes = [(s, many) for s, many in statements if "batch_outputs" in s]
    assert len(writes) == 1 and not writes[0][1] and "unnest" in writes[0][0]  # one statement, the rows as arrays
    with db() as session:  # stored already: a second store (a redelivery) is refused and adds nothing
        assert progress.complete_chunk(session, chunk, outputs, WINDOW) is None
        session.commit()
    with db() as session:
        stored = session.execute(select(BatchOutput.line_no, BatchOutput.line).where(
            BatchOutput.batch_id == batch_id).order_by(BatchOutput.line_no)).all()
        assert [(no, line) for no, _, line in outputs] == [tuple(r) for r in stored]
    with db() as session:  # a line stored twice: the copy fails as an INSERT would, and writes nothing
        rows = [(batch_id, 10_000, True, "new"), (batch_id, outputs[0][0], True, "again")]
        with pytest.raises(IntegrityError):
            copy_rows(session, BatchOutput.__table__, progress.OUTPUT_COLUMNS, rows)
        session.rollback()
        assert session.scalar(select(func.count()).select_from(BatchOutput).where(
            BatchOutput.batch_id == batch_id)) == CHUNK
