"""A batch survives its worker SIGKILLed mid-batch: every line comes out exactly once.

The batch runs on a `poolq worker` of its own, on a namespace of its own, so
killing it never disturbs the shared worker of the other tests. Small chunks
make the kill land between finished chunks and a running one; a short lease
lets the second worker take over the chunks the dead one held, and the
sweeper (sent here as beat would send it) resends the chunks it never claimed.
"""

from __future__ import annotations

import io
import json
import os
import time

import pytest
from sqlalchemy import func, select

from app import create_app
from app.batches.dispatch import SWEEP_BATCHES
from app.batches.records import Batch, BatchChunk, BatchOutput
from app.config import Settings
from test_recovery import Worker, own_model
from tests_support import chunks_for

LINES = 2400
CHUNK = 50
CHUNKS = chunks_for(LINES, CHUNK)  # 50 lines, 100, then 200 each: 14


@pytest.fixture
def batch_env(deployment_env, namespace):
    return {**deployment_env, "POOLQ_NAMESPACE": f"{namespace}bkill.", "POOLQ_LEASE_S": "2",
            "POOLQ_REQUEUE_AFTER_S": "2", "POOLQ_BATCH_CHUNK_LINES": str(CHUNK),
            "POOLQ_BATCH_PARALLEL_CHUNKS": "2", "POOLQ_MODELS": own_model(deployment_env, "tinybkill"),
            "POOLQ_WORKER_METRICS_PORT": "0"}  # the shared worker holds the metrics port


@pytest.fixture
def api(batch_env, api_keys):
    app = create_app(Settings.from_env(batch_env))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    client.poolq = app.extensions["poolq"]
    return client


def chunk_states(db, batch_id: str) -> dict[int, tuple[str, int]]:
    with db() as session:
        rows = session.execute(select(BatchChunk.index, BatchChunk.status, BatchChunk.attempts)
                               .where(BatchChunk.batch_id == batch_id))
        return {index: (status, attempts) for index, status, attempts in rows}


def test_a_batch_survives_its_worker_killed_mid_batch(batch_env, api, db, tmp_path):
    env = {**os.environ, **batch_env}
    custom_ids = [f"line-{i:05d}" for i in range(LINES)]
    content = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": "/classify",
                                  "body": {"model": "tinybkill", "input": [f"{cid} is a sentence to classify " * 6] * 2}})
                      + "\n" for cid in custom_ids).encode()
    first = Worker(env, tmp_path / "first.log")
    second = None
    try:
        first.wait_ready()
        file_id = api.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(content), "in.jsonl")}
                           ).json["id"]
        batch_id = api.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/classify"}).json["id"]

        # Kill once some chunks are stored and another is running.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = chunk_states(db, batch_id)
            done = {i for i, (status, _) in states.items() if status == "done"}
            if len(done) >= 2 and any(status == "running" for status, _ in states.values()):
                break
            time.sleep(0.01)
        first.kill()  # SIGKILL: no ack, no clean shutdown
        at_kill = chunk_states(db, batch_id)
        done_at_kill = {i: attempts for i, (status, attempts) in at_kill.items() if status == "done"}
        # The input is cut as it is read, so the kill may land before its last chunk is stored: the
        # validation is run again and stores only the chunks and lines the first run did not.
        assert len(at_kill) <= CHUNKS and 2 <= len(done_at_kill) < len(at_kill), at_kill
        running_at_kill = [i for i, (status, _) in at_kill.items() if status == "running"]
        assert running_at_kill, at_kill

        second = Worker(env, tmp_path / "second.log")
        second.wait_ready()
        # Beat's sweep, on a short period; the chunks the dead worker held are taken over when their lease lapses.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            batch = api.get(f"/v1/batches/{batch_id}").json
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            api.poolq.celery.send_task(SWEEP_BATCHES, queue=api.poolq.settings.maintenance_queue)
            time.sleep(1)
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}

        output = api.get(f"/v1/files/{batch['output_file_id']}/content").data.decode().splitlines()
        got = [json.loads(line)["custom_id"] for line in output]
        assert len(got) == LINES and got == custom_ids  # none lost, none repeated, in input order
        assert batch["error_file_id"] is None

        after = chunk_states(db, batch_id)
        assert len(after) == CHUNKS and all(status == "done" for status, _ in after.values())
        # Finished before the kill: never claimed again. Running at the kill: claimed again and stored once.
        assert {i: after[i][1] for i in done_at_kill} == done_at_kill
        assert all(after[i][1] >= 2 for i in running_at_kill), (running_at_kill, after)
        with db() as session:
            assert session.scalar(select(func.count()).where(BatchOutput.batch_id == batch_id)) == LINES
            assert session.get(Batch, batch_id).chunks_done == CHUNKS
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
