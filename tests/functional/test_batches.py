"""Bulk batches over HTTP with the official `openai` client, a real worker, Redis and Postgres."""

from __future__ import annotations

import json
import time

import pytest
from openai import OpenAI
from sqlalchemy import func, select, update

from app.batches import chunk_leases, closing, progress, services
from app.batches.records import Batch, BatchChunk, BatchOutput, File
from tests_support import validate_whole

FINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def oai(api_url, api_keys, worker_process):
    return OpenAI(base_url=api_url + "/v1", api_key=api_keys["alpha"], max_retries=0)


def jsonl(lines) -> bytes:
    return ("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n").encode()


def submit(oai, lines, endpoint, **kwargs):
    file = oai.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return oai.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h", **kwargs)


def wait(oai, batch_id, timeout=60, statuses=FINAL):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = oai.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")


def read_lines(oai, file_id) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in oai.files.content(file_id).text.splitlines()]


def same_body(got, want):
    """Batch and sync bodies agree up to ids, timestamps and float noise from batching."""
    assert set(got) == set(want)
    for key in got:
        if key in ("id", "created"):
            continue
        if isinstance(want[key], float):
            assert got[key] == pytest.approx(want[key], abs=1e-5)
        elif isinstance(want[key], list):
            assert len(got[key]) == len(want[key])
            for a, b in zip(got[key], want[key]):
                same_body(a, b) if isinstance(b, dict) else same_body({"v": a}, {"v": b})
        elif isinstance(want[key], dict):
            same_body(got[key], want[key])
        else:
            assert got[key] == want[key], key


def test_openai_client_round_trip_matches_the_sync_route(oai, client):
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/classify",
              "body": {"model": "tiny", "input": [f"text number {i}", "another one"] if i % 3 else f"single {i}"}}
             for i in range(40)]
    batch = submit(oai, lines, "/classify", metadata={"run": "nightly"})
    assert batch.object == "batch" and batch.id.startswith("batch_") and batch.status == "validating"
    assert batch.endpoint == "/classify" and batch.metadata == {"run": "nightly"}
    done = wait(oai, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 40 and done.request_counts.completed == 40
    assert done.request_counts.failed == 0 and done.error_file_id is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.expires_at
    out = read_lines(oai, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(40)]  # input order
    for line, o in zip(lines, out):
        assert o["id"].startswith("vllm-") and o["error"] is None
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"].startswith("vllm-batch-")
        sync = client.post("/classify", json=line["body"])
        assert sync.status_code == 200, sync.text
        same_body(o["response"]["body"], sync.json())
    meta = oai.files.retrieve(done.output_file_id)
    assert meta.object == "file" and meta.purpose == "batch_output" and meta.bytes > 0
    assert oai.batches.list(limit=1).data[0].id == done.id


def test_output_and_error_files_are_their_lines_in_input_order_each_ending_in_a_newline(oai, db):
    """The files' exact bytes, as the database joins them: a line a row in line order, each line
    ended by a newline, non-ASCII text as UTF-8 and the size in bytes, not characters."""
    good = {"method": "POST", "url": "/classify", "body": {"model": "tiny", "input": "caf\u00e9 \u2603"}}
    lines = [{"custom_id": "z\u00e9", **good}, {"custom_id": "bad", "method": "POST", "url": "/classify",
                                               "body": {"model": "nope", "input": "x"}},
             {"custom_id": "a\u2603", **good}]
    done = wait(oai, submit(oai, lines, "/classify").id)
    assert done.status == "completed", done
    output = oai.files.content(done.output_file_id).content
    errors = oai.files.content(done.error_file_id).content
    with db() as session:
        stored = dict(session.execute(select(BatchOutput.line_no, BatchOutput.line)
                                      .where(BatchOutput.batch_id == done.id)).all())
    assert output == (stored[0] + "\n" + stored[2] + "\n").encode()
    assert errors == (stored[1] + "\n").encode()
    assert [json.loads(line)["custom_id"] for line in output.decode().splitlines()] == ["z\u00e9", "a\u2603"]
    assert oai.files.retrieve(done.output_file_id).bytes == len(output) > len(output.decode())
    assert oai.files.retrieve(done.error_file_id).bytes == len(errors)
    assert oai.files.retrieve(done.output_file_id).filename == f"{done.id}_output.jsonl"
    with db() as session:  # the files name the lines; the batch's end wrote no second copy of them
        assert session.execute(select(File.content, File.batch_id, File.batch_ok).where(
            File.id.in_([done.output_file_id, done.error_file_id])).order_by(File.batch_ok)).all() == [
            (None, done.id, False), (None, done.id, True)]


def test_prefer_wait_answers_a_batch_when_it_ends(oai, client):
    lines = [{"custom_id": f"w-{i}", "method": "POST", "url": "/classify", "body": {"model": "tiny", "input": f"t {i}"}}
             for i in range(600)]  # two chunks
    batch = submit(oai, lines, "/classify")
    done = client.get(f"/v1/batches/{batch.id}", headers={"Prefer": "wait=25"}).json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 600  # one read, no polling


def test_run_batch_score_and_rerank_files_are_accepted_unchanged(oai, client):
    # The lines of vLLM's own run-batch examples, with the model poolq serves.
    score = [{"custom_id": "request-1", "method": "POST", "url": "/v1/score",
              "body": {"model": "ce", "text_1": "What is the capital of France?",
                       "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}},
             {"custom_id": "request-2", "method": "POST", "url": "/v1/score",
              "body": {"model": "ce", "text_1": "What is the capital of France?",
                       "text_2": "The capital of France is Paris."}}]
    rerank = [{"custom_id": "request-1", "method": "POST", "url": "/v1/rerank",
               "body": {"model": "ce", "query": "What is the capital of France?",
                        "documents": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}},
              {"custom_id": "request-2", "method": "POST", "url": "/v2/rerank",
               "body": {"model": "ce", "query": "capital", "documents": ["Paris", "Rome", "Oslo"], "top_n": 2}}]
    for lines, endpoint in ((score, "/v1/score"), (rerank, "/v1/rerank")):
        done = wait(oai, submit(oai, lines, endpoint).id)
        assert done.status == "completed" and done.request_counts.completed == 2, done
        for line, o in zip(lines, read_lines(oai, done.output_file_id)):
            assert o["custom_id"] == line["custom_id"] and o["response"]["status_code"] == 200
            same_body(o["response"]["body"], client.post(line["url"], json=line["body"]).json())


def test_a_bad_line_goes_to_the_error_file_and_the_rest_succeed(oai, client):
    good = {"method": "POST", "url": "/classify", "body": {"model": "tiny", "input": "fine"}}
    lines = [
        {"custom_id": "a", **good},
        "{not json",
        {"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
        {"custom_id": "c", "method": "POST", "url": "/classify", "body": {"model": "nope", "input": "x"}},
        {"custom_id": "d", "method": "POST", "url": "/classify", "body": {"model": "tiny", "input": "hello world " * 200,
                                                                          "truncate_prompt_tokens": None}},
        {"custom_id": "e", **good},
        {"custom_id": "a", **good},
        {"custom_id": "f", "method": "POST", "url": "/v1/score", "body": {"model": "ce", "text_1": "q",
                                                                          "text_2": "d"}},
    ]
    done = wait(oai, submit(oai, lines, "/classify").id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (8, 2, 6)
    assert [o["custom_id"] for o in read_lines(oai, done.output_file_id)] == ["a", "e"]
    errors = read_lines(oai, done.error_file_id)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [
        (None, 400), ("b", 400), ("c", 404), ("d", 400), ("a", 400), ("f", 400)]
    assert all(e["response"]["body"] is None for e in errors)
    assert errors[1]["error"].startswith("URL /v1/embeddings is not a supported endpoint")
    sync = client.post("/classify", json={"model": "nope", "input": "x"}).json()
    assert errors[2]["error"] == sync  # the route's own error object
    too_long = client.post("/classify", json={"model": "tiny", "input": "hello world " * 200}).json()
    assert errors[3]["error"]["error"]["message"] == too_long["error"]["message"]


def test_a_file_that_is_not_jsonl_fails_the_batch(oai):
    file = oai.files.create(file=("input.jsonl", b"\x00\xff\xfe binary"), purpose="batch")
    done = wait(oai, oai.batches.create(input_file_id=file.id, endpoint="/classify", completion_window="24h").id)
    assert done.status == "failed" and done.failed_at and done.errors.data[0].code == "invalid_file"
    only_bad = oai.files.create(file=("input.jsonl", jsonl([{"custom_id": "x"}])), purpose="batch")
    done = wait(oai, oai.batches.create(input_file_id=only_bad.id, endpoint="/classify",
                                        completion_window="24h").id)
    assert done.status == "failed" and done.errors.data[0].message == "The input file has no valid request line."


def test_batches_list_newest_first_in_cursor_pages(oai):
    mine = [submit(oai, [{"custom_id": "a", "method": "POST", "url": "/classify",
                          "body": {"model": "tiny", "input": "x"}}], "/classify").id for _ in range(3)]
    first = oai.batches.list(limit=2)
    assert first.has_more and first.first_id == first.data[0].id and first.last_id == first.data[1].id
    listed = [b.id for b in oai.batches.list(limit=2)]  # the client follows `after` page by page
    assert listed[:3] == mine[::-1] and len(listed) == len(set(listed))
    for batch_id in mine:
        wait(oai, batch_id)


def test_files_and_batches_are_scoped_to_the_tenant(oai, other_client):
    batch = submit(oai, [{"custom_id": "a", "method": "POST", "url": "/classify",
                          "body": {"model": "tiny", "input": "x"}}], "/classify")
    assert other_client.get(f"/v1/batches/{batch.id}").status_code == 404
    assert other_client.get(f"/v1/files/{batch.input_file_id}/content").status_code == 404
    assert other_client.post(f"/v1/batches/{batch.id}/cancel").status_code == 404
    assert all(b["id"] != batch.id for b in other_client.get("/v1/batches").json()["data"])
    wait(oai, batch.id)
    oai.files.delete(batch.input_file_id)
    assert other_client.get(f"/v1/files/{batch.input_file_id}").status_code == 404


def big_batch(n, per_line=4):
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/classify",
             "body": {"model": "tiny", "input": [f"line {i} text {j} " * 8 for j in range(per_line)]}}
            for i in range(n)]


def test_cancel_stops_at_a_chunk_boundary(oai):
    # More lines than the chunks a batch may have in flight (4: 512 + 1,024 + 2 x 2,048 lines),
    # so some are never sent, whenever the cancel lands.
    batch = submit(oai, big_batch(8000, per_line=1), "/classify")
    wait(oai, batch.id, statuses=("in_progress",) + FINAL)
    cancelled = oai.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at
    done = wait(oai, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    counts = done.request_counts
    assert counts.completed < counts.total == 8000
    assert len(read_lines(oai, done.output_file_id)) == counts.completed  # the chunks that finished, kept


def test_a_chunk_streamed_in_pieces_answers_every_line_once_in_order(oai, client):
    """A 512-line chunk goes to the engine STREAM_LINES lines at a time; a line refused in a
    later piece (and one in the first) gets the route's 400 and the others their results."""
    from workers.scheduler.work import STREAM_LINES

    n = 512
    bad = {3, STREAM_LINES + 7, n - 2}  # the first piece, a later one, the last
    too_long = "hello world " * 200
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/classify",
              "body": {"model": "tiny", "input": too_long if i in bad else f"text number {i}",
                       "truncate_prompt_tokens": None}} for i in range(n)]
    done = wait(oai, submit(oai, lines, "/classify").id, timeout=120)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (n - len(bad), len(bad))
    outputs = read_lines(oai, done.output_file_id)
    assert [o["custom_id"] for o in outputs] == [f"r{i}" for i in range(n) if i not in bad]
    for i in (0, STREAM_LINES, n - 1):  # a line of each piece is what the sync route answers
        got = next(o for o in outputs if o["custom_id"] == f"r{i}")["response"]["body"]
        same_body(got, client.post("/classify", json={"model": "tiny", "input": f"text number {i}"}).json())
    errors = read_lines(oai, done.error_file_id)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [(f"r{i}", 400) for i in sorted(bad)]


def test_an_interactive_job_completes_while_a_large_batch_runs(oai, client):
    batch = submit(oai, big_batch(6000), "/classify")
    wait(oai, batch.id, statuses=("in_progress",) + FINAL)
    started = time.monotonic()
    response = client.post("/classify", json={"model": "tiny", "input": "urgent"})
    latency = time.monotonic() - started
    assert response.status_code == 200, response.text
    during = oai.batches.retrieve(batch.id)
    assert during.status == "in_progress" and during.request_counts.completed < 6000, during
    assert latency < 5, latency
    oai.batches.cancel(batch.id)
    wait(oai, batch.id)


def _validated(db, client, served, lines, endpoint="/classify", chunk_lines=512):
    """A batch validated in this process: no message is out for it, so no worker touches it yet."""
    file_id = client.post("/v1/files", files={"file": ("in.jsonl", jsonl(lines))},
                          data={"purpose": "batch"}).json()["id"]
    with db() as session:
        from app.tenants.records import Tenant

        tenant = session.scalar(select(Tenant.id).where(Tenant.name == "alpha"))
        batch = services.create_batch(session, tenant, {"input_file_id": file_id, "endpoint": endpoint})
        validate_whole(session, batch.id, served, 1000, chunk_lines, window=0)
        session.commit()
    return batch.id


def _created(db, client, lines, endpoint="/classify"):
    """A batch created in this process and not validated: no message is out for it."""
    file_id = client.post("/v1/files", files={"file": ("in.jsonl", jsonl(lines))},
                          data={"purpose": "batch"}).json()["id"]
    with db() as session:
        from app.tenants.records import Tenant

        tenant = session.scalar(select(Tenant.id).where(Tenant.name == "alpha"))
        batch = services.create_batch(session, tenant, {"input_file_id": file_id, "endpoint": endpoint})
        session.commit()
    return batch.id


def _cut_rows(db, batch_id):
    with db() as session:
        chunks = session.execute(select(BatchChunk.index, BatchChunk.model, BatchChunk.first_line,
                                        BatchChunk.last_line, BatchChunk.num_lines)
                                 .where(BatchChunk.batch_id == batch_id).order_by(BatchChunk.index)).all()
        errors = session.scalars(select(BatchOutput.line_no).where(BatchOutput.batch_id == batch_id)
                                 .order_by(BatchOutput.line_no)).all()
        batch = session.get(Batch, batch_id)
        return [tuple(c) for c in chunks], list(errors), batch


def _mixed_lines(n, bad):
    lines = big_batch(n, per_line=1)
    for i in bad:
        lines[i] = {"custom_id": f"r{i}", "method": "POST", "url": "/classify", "body": {"model": "nope", "input": "x"}}
    return lines


def test_a_validation_run_again_after_a_crash_stores_only_what_the_first_did_not(client, db, poolq):
    """The input is cut step by step, each step its own commit; a run that died after two steps is
    run again from the top and stores only the later chunks and bad lines: the same chunks as one
    uninterrupted run, each bad line once, the counters right."""
    bad = {1, 6, 13}
    lines = _mixed_lines(20, bad)
    whole = _created(db, client, lines)
    with db() as session:
        assert validate_whole(session, whole, poolq.served, 1000, 3, window=0).stop
        session.commit()
    want_chunks, want_errors, done = _cut_rows(db, whole)
    assert want_errors == sorted(bad) and len(want_chunks) == 3  # 17 valid lines: 3, then 6, then the last 8
    assert (done.status, done.total, done.failed, done.chunks_total) == ("in_progress", 20, 3, 3)

    crashed = _created(db, client, lines)
    with db() as session:
        source = progress.validation_source(session, crashed)
    steps = progress.cut(source, poolq.served, 1000, 3)
    for _ in range(2):
        with db() as session:
            assert not progress.store_step(session, crashed, next(steps), window=0).stop
            session.commit()
    chunks, errors, mid = _cut_rows(db, crashed)
    # Running already, the rest unknown: chunks_total stays NULL, so nothing can finalize it.
    assert (mid.status, mid.chunks_total, mid.total, mid.validated_lines) == ("in_progress", None, 20, 11)
    assert chunks == want_chunks[:2] and errors == [1, 6] and mid.failed == 2
    with db() as session:  # the run again, from the top
        assert validate_whole(session, crashed, poolq.served, 1000, 3, window=0).stop
        session.commit()
    chunks, errors, after = _cut_rows(db, crashed)
    assert chunks == want_chunks and errors == want_errors
    assert (after.total, after.failed, after.chunks_total, after.validated_lines) == (20, 3, 3, 20)
    with db() as session:  # and once more: it is cut, nothing to do
        assert validate_whole(session, crashed, poolq.served, 1000, 3, window=0) == progress.Validated([])


def test_chunks_stored_before_the_cut_ends_finalize_only_with_its_last_step(client, db, poolq):
    """A chunk stored while the input is still being cut never finalizes the batch (the count is
    unknown); the last step, finding every chunk stored, does."""
    batch_id = _created(db, client, _mixed_lines(10, {9}))  # 9 valid lines (chunks of 3 and 6), a bad one last
    with db() as session:
        source = progress.validation_source(session, batch_id)
    steps = progress.cut(source, poolq.served, 1000, 3)
    with db() as session:
        for _ in range(2):
            progress.store_step(session, batch_id, next(steps), window=0)
        session.commit()
        for index in (0, 1):
            claimed = chunk_leases.claim(session, batch_id, index, "w", lease_s=300)
            session.commit()
            outputs = [(no, True, json.dumps({"custom_id": cid})) for no, cid, _ in claimed.lines]
            stored = progress.complete_chunk(session, claimed, outputs, window=0)
            session.commit()
            assert stored is not None and not stored.finalize
        last = next(steps)
        assert last.final and not last.chunks
        assert progress.store_step(session, batch_id, last, window=0) == progress.Validated([], finalize=True,
                                                                                           stop=True)
        session.commit()
        assert closing.start_closing(session, batch_id) == "completed"


def test_a_cancel_while_the_input_is_cut_stops_the_cut(client, db, poolq):
    batch_id = _created(db, client, big_batch(9, per_line=1))
    with db() as session:
        source = progress.validation_source(session, batch_id)
        tenant = session.get(Batch, batch_id).tenant_id
    steps = progress.cut(source, poolq.served, 1000, 3)
    with db() as session:
        progress.store_step(session, batch_id, next(steps), window=0)
        session.commit()
        services.cancel_batch(session, batch_id, tenant)
        session.commit()
        assert progress.store_step(session, batch_id, next(steps), window=0).stop
        session.commit()
    chunks, _, batch = _cut_rows(db, batch_id)
    assert len(chunks) == 1 and batch.status == "cancelling"


@pytest.fixture(scope="module")
def poolq(settings):
    """The deployment's state as the API has it: served models, and Celery to send as the API sends."""
    from app import create_app

    return create_app(settings).extensions["poolq"]


def test_a_chunk_delivered_twice_writes_its_lines_once(oai, client, db, poolq):
    from app.batches.dispatch import send_chunk

    batch_id = _validated(db, client, poolq.served, big_batch(30, per_line=1))
    assert send_chunk(poolq.celery, batch_id, 0, "tiny") and send_chunk(poolq.celery, batch_id, 0, "tiny")
    done = wait(oai, batch_id)
    assert done.status == "completed" and done.request_counts.completed == 30, done
    assert [o["custom_id"] for o in read_lines(oai, done.output_file_id)] == [f"r{i}" for i in range(30)]
    send_chunk(poolq.celery, batch_id, 0, "tiny")  # a late redelivery: the chunk is done, nothing is recomputed
    time.sleep(0.5)
    with db() as session:
        chunk = session.get(BatchChunk, (batch_id, 0))
        assert chunk.status == "done" and chunk.attempts in (1, 2)  # the two may have raced; one stored
        assert session.scalar(select(func.count()).where(BatchOutput.batch_id == batch_id)) == 30
        assert session.get(Batch, batch_id).completed == 30


def test_racing_attempts_of_a_chunk_store_it_once(client, db, poolq):
    batch_id = _validated(db, client, poolq.served, big_batch(3, per_line=1))
    with db() as session:
        first = chunk_leases.claim(session, batch_id, 0, "first", lease_s=300)
        session.commit()
        assert chunk_leases.claim(session, batch_id, 0, "second", lease_s=300) is None  # held, live
        # `first`'s worker stopped renewing: its lease lapses (in this transaction, so no
        # other worker sees it lapsed) and the next claim takes the chunk over.
        session.execute(update(BatchChunk).where(BatchChunk.batch_id == batch_id)
                        .values(lease_expires_at=BatchChunk.started_at))
        second = chunk_leases.claim(session, batch_id, 0, "second", lease_s=300)
        session.commit()
        outputs = [(no, True, json.dumps({"custom_id": cid})) for no, cid, _ in second.lines]
        assert progress.complete_chunk(session, first, outputs, window=0) is None  # an older attempt loses
        assert progress.complete_chunk(session, second, outputs, window=0).finalize
        session.commit()
        assert progress.complete_chunk(session, second, outputs, window=0) is None
        assert chunk_leases.claim(session, batch_id, 0, "third", lease_s=300) is None
        batch = session.get(Batch, batch_id)
        assert (batch.completed, batch.chunks_done) == (3, 1)


def test_a_batch_past_its_window_expires_and_keeps_what_finished(oai, client, db, poolq):
    from app.batches.dispatch import EXPIRE_BATCHES, send_chunk

    batch_id = _validated(db, client, poolq.served, big_batch(12, per_line=1), chunk_lines=4)
    with db() as session:  # one chunk of two (4 lines, then 8) finished in time
        claimed = chunk_leases.claim(session, batch_id, 0, "test", lease_s=300)
        outputs = [(no, True, json.dumps({"custom_id": cid})) for no, cid, _ in claimed.lines]
        progress.complete_chunk(session, claimed, outputs, window=0)
        session.execute(update(Batch).where(Batch.id == batch_id).values(expires_at=Batch.created_at))
        session.commit()
    poolq.celery.send_task(EXPIRE_BATCHES, queue=poolq.settings.maintenance_queue)  # as beat does
    done = wait(oai, batch_id)
    assert done.status == "expired" and done.expired_at, done
    assert [o["custom_id"] for o in read_lines(oai, done.output_file_id)] == ["r0", "r1", "r2", "r3"]
    send_chunk(poolq.celery, batch_id, 1, "tiny")  # a late chunk message does nothing
    time.sleep(0.5)
    with db() as session:
        assert session.scalar(select(func.count()).where(BatchOutput.batch_id == batch_id)) == 4
        assert session.get(BatchChunk, (batch_id, 1)).status == "cancelled"
        assert closing.expire(session, batch_id) is False


def test_the_sweeper_resumes_a_batch_whose_messages_were_lost(oai, client, db, poolq):
    """Validated and committed, then the process died before any send: beat's sweep picks it up."""
    from app.batches.dispatch import SWEEP_BATCHES

    batch_id = _validated(db, client, poolq.served, big_batch(20, per_line=1), chunk_lines=8)
    with db() as session:
        assert batch_id in closing.overdue(session, 900, 3600)[2]  # in progress, nothing in flight
    poolq.celery.send_task(SWEEP_BATCHES, queue=poolq.settings.maintenance_queue)  # as beat does
    time.sleep(1)
    poolq.celery.send_task(SWEEP_BATCHES, queue=poolq.settings.maintenance_queue)  # duplicates are harmless
    done = wait(oai, batch_id)
    assert done.status == "completed" and done.request_counts.completed == 20, done
    assert [o["custom_id"] for o in read_lines(oai, done.output_file_id)] == [f"r{i}" for i in range(20)]


def test_finished_batches_and_their_output_files_expire_with_the_retention(oai, db):
    """Past the retention a finished batch goes with its output file; the caller's input file stays."""
    import datetime as dt

    from sqlalchemy import update

    import openai

    from app.batches.records import Batch
    from app.batches.retention import expire_finished_batches

    line = {"custom_id": "a", "method": "POST", "url": "/classify", "body": {"model": "tiny", "input": "x"}}
    old, new = (wait(oai, submit(oai, [line], "/classify").id) for _ in range(2))
    assert old.status == new.status == "completed"
    with db() as session:
        session.execute(update(Batch).where(Batch.id == old.id)
                        .values(completed_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)))
        assert expire_finished_batches(session, retention_s=7 * 24 * 3600) >= 1
        session.commit()
    with pytest.raises(openai.NotFoundError):
        oai.batches.retrieve(old.id)
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(old.output_file_id)
    assert oai.files.retrieve(old.input_file_id).id == old.input_file_id
    assert oai.batches.retrieve(new.id).status == "completed"


def test_uploads_expire_unless_a_schedule_or_an_unfinished_batch_uses_them(oai, client, db):
    """OpenAI's `expires_after` (and POOLQ_FILE_EXPIRY_S by default) bound how long uploads stay."""
    import datetime as dt

    import openai

    from app.batches.records import File
    from app.batches.retention import expire_files

    line = {"custom_id": "a", "method": "POST", "url": "/classify", "body": {"model": "tiny", "input": "x"}}
    hour = oai.files.create(file=("a.jsonl", jsonl([line])), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert hour.expires_at == hour.created_at + 3600
    default = oai.files.create(file=("b.jsonl", jsonl([line])), purpose="batch")
    assert default.expires_at == default.created_at + 30 * 24 * 3600  # the deployment's default
    scheduled = oai.files.create(file=("c.jsonl", jsonl([line])), purpose="batch",
                                 expires_after={"anchor": "created_at", "seconds": 3600})
    schedule = client.post("/v1/schedules", json={"name": "nightly-expiry", "cron": "0 2 * * *", "model": "tiny",
                                                  "endpoint": "/classify", "input_file_id": scheduled.id})
    assert schedule.status_code == 200, schedule.text
    in_use = oai.files.create(file=("d.jsonl", jsonl([line])), purpose="batch",
                              expires_after={"anchor": "created_at", "seconds": 3600})
    running = oai.batches.create(input_file_id=in_use.id, endpoint="/classify", completion_window="24h")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    with db() as session:
        # An unfinished batch: held in `validating` for the sweep (the worker may be quick).
        session.execute(update(Batch).where(Batch.id == running.id).values(status="validating"))
        session.execute(update(File).where(File.id.in_([hour.id, scheduled.id, in_use.id])).values(expires_at=past))
        assert expire_files(session) == 1
        session.commit()
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(hour.id)
    for kept in (default, scheduled, in_use):
        assert oai.files.retrieve(kept.id).id == kept.id
    client.delete(f"/v1/schedules/{schedule.json()['id']}")


@pytest.mark.parametrize("form,message", [
    ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "anchor"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "59"}, "seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "seconds"),
    ({"expires_after[anchor]": "created_at"}, "seconds"),
])
def test_a_bad_expires_after_is_a_400(client, form, message):
    response = client.post("/v1/files", data={"purpose": "batch", **form}, files={"file": ("x.jsonl", b"{}\n")})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "expires_after" and message in error["message"]
