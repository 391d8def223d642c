"""POST /v1/batches and /v1/jobs when the connection breaks at COMMIT: the answer is the truth.

A proxy in front of the test database (private_servers.CommitCutter) breaks
the batch's COMMIT as a network fault would: before the server gets it
(nothing kept: 503 with Retry-After) or after the server committed but before
the client heard (kept: 200, the batch exists once, so a client never retries
into a duplicate).
"""

from __future__ import annotations

import io
import json
import uuid

import pytest
from sqlalchemy import func, select

from app import create_app
from app.batches.records import Batch
from app.config import Settings
from private_servers import CommitCutter

LINE = {"custom_id": "a", "method": "POST", "url": "/classify", "body": {"model": "tiny", "input": "x"}}


@pytest.fixture(scope="module")
def cutter():
    proxy = CommitCutter()
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def api(deployment_env, namespace, pg_url, cutter, api_keys):
    url = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{cutter.port}/")
    assert url != pg_url
    env = {**deployment_env, "POOLQ_DATABASE_URL": url, "POOLQ_NAMESPACE": f"{namespace}fcm."}
    app = create_app(Settings.from_env(env))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    yield client
    poolq = app.extensions["poolq"]
    poolq.db_engine.dispose()
    poolq.request_session_factory.kw["bind"].dispose()
    poolq.statement_engine.dispose()


def upload(api) -> str:
    content = (json.dumps(LINE) + "\n").encode()
    response = api.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(content), "in.jsonl")})
    assert response.status_code == 200, response.json
    return response.json["id"]


def batches_of(db, file_id: str) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(Batch).where(Batch.input_file_id == file_id))


def create(api, file_id: str):
    return api.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/classify",
                                         "completion_window": "24h"})


def create_through_a_cut(api, cutter, mode: str):
    """(the answer, the file) of a batch whose COMMIT the proxy breaks `before` or `after` the server."""
    file_id = upload(api)
    cutter.arm(mode, b"INSERT INTO batches")
    response = create(api, file_id)
    assert cutter.fired.is_set()
    return response, file_id


def test_a_batch_committed_before_the_connection_broke_is_a_200(api, cutter, db):
    response, file_id = create_through_a_cut(api, cutter, "after")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "validating"
    assert batches_of(db, file_id) == 1


def test_a_batch_whose_commit_never_arrived_is_a_503_that_kept_nothing(api, cutter, db):
    response, file_id = create_through_a_cut(api, cutter, "before")
    assert response.status_code == 503, response.json
    assert response.headers["Retry-After"] and response.json["error"]["code"] == 503
    assert batches_of(db, file_id) == 0
    retried = create(api, file_id)  # the client retries, as the 503 says
    assert retried.status_code == 200 and batches_of(db, file_id) == 1


def jobs_tagged(db, tag: str) -> int:
    from app.jobs.records import Job

    with db() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.request["input"][0].as_string() == tag))


@pytest.mark.parametrize("mode", ["after", "before"])
def test_a_job_is_202_only_if_kept_whichever_side_of_its_insert_the_connection_broke(api, cutter, db, mode):
    """A job is one autocommit INSERT: the statement is its commit. Cut after the server ran it,
    the job is kept and answered 202 (once); cut before, nothing is kept and the answer is 503."""
    tag = f"cut-{mode}-{uuid.uuid4().hex[:8]}"
    cutter.arm(mode, tag.encode(), autocommit=True)
    response = api.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": [tag]})
    assert cutter.fired.is_set()
    if mode == "after":
        assert response.status_code == 202, response.json
        assert jobs_tagged(db, tag) == 1
    else:
        assert response.status_code == 503, response.json
        assert response.headers["Retry-After"]
        assert jobs_tagged(db, tag) == 0
