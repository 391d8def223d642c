"""The job lifecycle: cancel at each state, list, metadata, delete, retention, idempotency."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, update

from app.jobs.records import Job

pytestmark = pytest.mark.usefixtures("worker_process")


@pytest.fixture
def offline_client(deployment_env, api_keys):
    """The same API and database, but a broker that refuses: jobs stay queued (unsent)."""
    from app import create_app
    from app.config import Settings

    app = create_app(Settings.from_env({**deployment_env, "POOLQ_BROKER_URL": "redis://127.0.0.1:1/0"}))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    return client


def test_a_job_accepted_while_the_broker_is_down_stays_queued(offline_client, client):
    response = offline_client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x"})
    assert response.status_code == 202  # durable in Postgres; the sweeper sends it later
    job = client.get(f"/v1/jobs/{response.json['id']}").json()
    assert job["status"] == "queued"


def test_cancel_a_queued_job_at_once(offline_client, client):
    job_id = offline_client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x"}).json["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"] is not None
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_cancel_a_running_job_stops_it_and_writes_no_result(client):
    texts = [f"text number {i}" for i in range(12000)]  # several chunks of work
    job_id = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": texts}).json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    time.sleep(4)  # long enough for the worker to finish the whole job had it not stopped
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["result"] is None and job["usage"] is None


def test_cancel_a_finished_job_is_409(client):
    job_id = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x"}).json()["id"]
    client.wait_job(job_id)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409 and response.json()["error"]["type"] == "ConflictError"


def test_list_filters_and_paginates_with_a_cursor(client):
    tag = secrets.token_hex(4)
    ids = [client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": f"t{i}",
                                         "metadata": {"batch": tag, "i": str(i)}}).json()["id"] for i in range(5)]
    for job_id in ids:
        client.wait_job(job_id)
    seen, after = [], None
    while True:
        params = {"metadata.batch": tag, "limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/jobs", params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert seen == list(reversed(ids))  # newest first, nothing lost or repeated
    one = client.get("/v1/jobs", params={"metadata.batch": tag, "metadata.i": "3"}).json()["data"]
    assert [job["id"] for job in one] == [ids[3]] and one[0]["metadata"] == {"batch": tag, "i": "3"}
    assert client.get("/v1/jobs", params={"metadata.batch": tag, "status": "queued"}).json()["data"] == []
    future = time.time() + 3600
    assert client.get("/v1/jobs", params={"metadata.batch": tag, "created_after": future}).json()["data"] == []


@pytest.mark.parametrize("params", [{"status": "nope"}, {"limit": 0}, {"limit": "x"}, {"after": "garbage!"},
                                    {"created_after": "yesterday"}])
def test_bad_list_parameters_are_400(client, params):
    assert client.get("/v1/jobs", params=params).status_code == 400


@pytest.mark.parametrize("metadata", [{"k": 1}, {f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, "flat"])
def test_bad_metadata_is_400(client, metadata):
    response = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x", "metadata": metadata})
    assert response.status_code == 400


def test_delete_a_finished_job_and_its_result(client, pg_url):
    job_id = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x"}).json()["id"]
    client.wait_job(job_id)
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200 and response.json() == {"id": job_id, "object": "job.deleted", "deleted": True}
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_delete_an_unfinished_job_is_409(offline_client, client):
    job_id = offline_client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x"}).json["id"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 409


def test_retention_deletes_old_finished_jobs(client, pg_url, settings):
    from app.db import make_engine, make_session_factory
    from app.jobs.lifecycle import expire_jobs

    old = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "old"}).json()["id"]
    new = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "new"}).json()["id"]
    client.wait_job(old), client.wait_job(new)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == uuid.UUID(old))
                     .values(finished_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)))
    engine.dispose()
    db = make_engine(pg_url)
    with make_session_factory(db)() as session:
        assert expire_jobs(session, retention_s=7 * 24 * 3600) >= 1
        session.commit()
    db.dispose()
    assert client.get(f"/v1/jobs/{old}").status_code == 404
    assert client.get(f"/v1/jobs/{new}").json()["status"] == "succeeded"
    assert "expire-jobs" in _beat_schedule(settings)


def _beat_schedule(settings) -> dict:
    from app import create_app

    return create_app(settings).extensions["celery"].conf.beat_schedule


def test_idempotency_key_returns_the_same_job(client):
    key = f"idem-{secrets.token_hex(4)}"
    body = {"task": "classify", "model": "tiny", "input": ["a", "b"]}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    again = client.post("/v1/jobs", json=dict(reversed(list(body.items()))), headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/jobs", json={**body, "input": ["c"]}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"


def test_idempotency_keys_are_per_tenant(client, other_client):
    key = f"shared-{secrets.token_hex(4)}"
    body = {"task": "classify", "model": "tiny", "input": "a"}
    mine = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}).json()["id"]
    theirs = other_client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}).json()["id"]
    assert mine != theirs


def test_prefer_wait_answers_a_job_as_soon_as_it_finishes(client):
    job_id = client.post("/v1/jobs", json={"task": "classify", "model": "tiny",
                                           "input": [f"text {i}" for i in range(300)]}).json()["id"]
    job = client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=25"}).json()
    assert job["status"] == "succeeded" and len(job["result"]["data"]) == 300  # one read, no polling


def test_prefer_wait_answers_on_a_change_or_at_its_bound(offline_client, client):
    job_id = offline_client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x"}).json["id"]
    started = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=0.5"}).json()["status"] == "queued"
    assert time.monotonic() - started >= 0.5  # the bound, and the job as it then is
    # a preference the server cannot read is ignored (RFC 7240), not refused
    assert client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=soon"}).json()["status"] == "queued"

    answers = []
    reader = threading.Thread(target=lambda: answers.append(
        client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "respond-async, wait=20"}).json()))
    reader.start()
    time.sleep(0.3)
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    reader.join(10)
    assert not reader.is_alive(), "the waiting read did not answer the change"
    assert answers[0]["status"] == "cancelled"
