"""Schedules over HTTP and the CLI, fired by beat's task, with a real worker, Redis and Postgres."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app import create_app
from app.batches.records import Batch
from app.db.base import as_utc, utcnow
from app.schedules.cron import next_fire
from app.schedules.firing import due_schedules, fire_due
from app.schedules.records import Schedule

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def poolq(settings):
    """The app a beat-fired task runs in (its own Celery app, so the task's `self.poolq` is this deployment's)."""
    app = create_app(settings)
    import workers.tasks  # noqa: F401  (registers the tasks)

    return app.extensions["poolq"]


def upload(client, lines) -> str:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    response = client.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def classify_lines(n, model="tiny"):
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/classify", "body": {"model": model, "input": f"text {i}"}}
            for i in range(n)]


def create(client, **fields):
    body = {"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Paris", "endpoint": "/classify",
            "model": "tiny", **fields}
    response = client.post("/v1/schedules", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def output(client, batch) -> list[dict]:
    text = client.get(f"/v1/files/{batch['output_file_id']}/content").text
    return [json.loads(line) for line in text.splitlines()]


def make_due(db, schedule_id, ago=dt.timedelta(days=3)) -> dt.datetime:
    """As if beat had been down through several slots."""
    slot = utcnow() - ago
    with db() as session:
        session.execute(update(Schedule).where(Schedule.id == schedule_id).values(next_run_at=slot))
        session.commit()
    return slot


def batches_of(db, schedule_id) -> list[Batch]:
    with db() as session:
        return list(session.scalars(select(Batch).where(Batch.meta["schedule_id"].as_string() == schedule_id)))


def test_create_list_get_pause_resume_delete(client):
    file_id = upload(client, classify_lines(2))
    before = utcnow()
    made = create(client, input_file_id=file_id, metadata={"team": "search"})
    assert made["object"] == "schedule" and made["id"].startswith("sched_") and not made["paused"]
    assert made["cron"] == "0 2 * * *" and made["timezone"] == "Europe/Paris" and made["input_file_id"] == file_id
    assert made["selection"] is None and made["last_batch_id"] is None and made["metadata"] == {"team": "search"}
    assert made["next_run_at"] == int(next_fire("0 2 * * *", "Europe/Paris", before).timestamp())
    other = create(client, name="second", input_file_id=file_id, cron="@hourly", timezone="UTC")

    page = client.get("/v1/schedules", params={"limit": 1}).json()
    assert page["object"] == "list" and page["has_more"] and page["data"][0]["id"] == other["id"]
    rest = client.get("/v1/schedules", params={"limit": 1, "after": page["last_id"]}).json()
    assert rest["data"][0]["id"] == made["id"]
    assert client.get(f"/v1/schedules/{made['id']}").json() == made

    paused = client.post(f"/v1/schedules/{made['id']}/pause").json()
    assert paused["paused"] and paused["next_run_at"] is None
    assert client.post(f"/v1/schedules/{made['id']}/pause").json()["paused"]  # idempotent
    resumed = client.post(f"/v1/schedules/{made['id']}/resume").json()
    assert not resumed["paused"] and resumed["next_run_at"] == made["next_run_at"]
    assert client.post(f"/v1/schedules/{made['id']}/resume").json() == resumed  # resuming an active one: no-op

    for schedule in (made, other):
        gone = client.delete(f"/v1/schedules/{schedule['id']}")
        assert gone.json() == {"id": schedule["id"], "object": "schedule", "deleted": True}
    assert client.get(f"/v1/schedules/{made['id']}").status_code == 404
    assert client.post(f"/v1/schedules/{made['id']}/trigger").status_code == 404


def test_invalid_schedules_are_400s_in_vllms_error_shape(client, other_client):
    mine = upload(client, classify_lines(1))
    theirs = upload(other_client, classify_lines(1))
    cases = [
        ({"cron": "0 2 * *", "input_file_id": mine}, "cron"),
        ({"cron": "0 0 31 2 *", "input_file_id": mine}, "cron"),
        ({"timezone": "Mars/Olympus", "input_file_id": mine}, "timezone"),
        ({"model": "nope", "input_file_id": mine}, "model"),
        ({"endpoint": "/v1/score", "input_file_id": mine}, "endpoint"),  # tiny is not a cross-encoder
        ({"revision": "v2", "input_file_id": mine}, "revision"),
        ({"input_file_id": "file-" + "0" * 24}, "input_file_id"),
        ({"input_file_id": theirs}, "input_file_id"),
        ({}, "input_file_id"),
        ({"input_file_id": mine, "selection": {"model": "tiny"}}, "input_file_id"),
        ({"selection": {"task": "score"}}, "selection.task"),
        ({"input_file_id": mine, "completion_window": "99d"}, "completion_window"),
        ({"input_file_id": mine, "metadata": {"schedule_id": "x"}}, "metadata"),
        ({"input_file_id": mine, "name": "a\u0000b"}, None),
        ({"input_file_id": mine, "surprise": 1}, None),
    ]
    base = {"name": "bad", "cron": "0 2 * * *", "endpoint": "/classify", "model": "tiny"}
    for fields, param in cases:
        response = client.post("/v1/schedules", json={**base, **fields})
        assert response.status_code == 400, (fields, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == 400, error
        if param is not None:
            assert error["param"] == param, (fields, error)
    assert client.post("/v1/schedules", data="nope", headers={"Content-Type": "text/plain"}).status_code == 400
    assert all(s["name"] != "bad" for s in client.get("/v1/schedules").json()["data"])


def test_a_due_slot_fires_once_however_often_the_task_runs_and_the_batch_completes(client, db, poolq,
                                                                                   worker_process):
    # The file's lines name an old model; the schedule's model is what runs.
    file_id = upload(client, classify_lines(5, model="tiny-v0"))
    schedule = create(client, input_file_id=file_id, metadata={"run": "nightly"})
    make_due(db, schedule["id"])
    task = poolq.celery.tasks["poolq.fire_schedules"]
    assert task() == 1
    assert task() == 0  # the same slot, again: nothing
    fired = client.get(f"/v1/schedules/{schedule['id']}").json()
    # Three missed days fire once; the next slot is the first one after now.
    assert fired["next_run_at"] > time.time() and fired["last_error"] is None
    assert fired["last_run_at"] and fired["last_batch_id"]
    assert [b.id for b in batches_of(db, schedule["id"])] == [fired["last_batch_id"]]

    done = client.wait_batch(fired["last_batch_id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert done["metadata"] == {"run": "nightly", "schedule_id": schedule["id"]}
    assert done["input_file_id"] != file_id  # a copy with the schedule's model
    assert [o["custom_id"] for o in output(client, done)] == [f"r{i}" for i in range(5)]
    assert all(o["response"]["body"]["model"] == "tiny" for o in output(client, done))
    client.delete(f"/v1/schedules/{schedule['id']}")


def test_concurrent_beats_claim_a_slot_once(client, db, poolq):
    schedule = create(client, input_file_id=upload(client, classify_lines(1)))
    slot = make_due(db, schedule["id"], dt.timedelta(minutes=1))
    with db() as session:  # every beat read the same due row before any fired it
        assert (schedule["id"], slot) in [(i, as_utc(s)) for i, s in due_schedules(session, utcnow())]
    results, barrier = [], threading.Barrier(6)

    def beat():
        barrier.wait()
        with db() as session:
            results.append(fire_due(session, schedule["id"], slot, utcnow(), poolq.served, 10**8))
            session.commit()

    threads = [threading.Thread(target=beat) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fired = [r for r in results if r is not None]
    assert len(fired) == 1 and fired[0].batch_id and len(batches_of(db, schedule["id"])) == 1
    client.delete(f"/v1/schedules/{schedule['id']}")


def test_a_message_delivered_twice_to_the_worker_fires_once(client, db, poolq, settings, worker_process):
    schedule = create(client, input_file_id=upload(client, classify_lines(2)), cron="*/5 * * * *", timezone="UTC")
    make_due(db, schedule["id"])
    for _ in range(2):
        poolq.celery.send_task("poolq.fire_schedules", queue=settings.maintenance_queue)
    deadline = time.monotonic() + 30
    while not (batch_id := client.get(f"/v1/schedules/{schedule['id']}").json()["last_batch_id"]):
        assert time.monotonic() < deadline, "the worker did not fire the schedule"
        time.sleep(0.1)
    assert client.wait_batch(batch_id)["status"] == "completed"  # both messages were taken meanwhile
    assert [b.id for b in batches_of(db, schedule["id"])] == [batch_id]
    client.delete(f"/v1/schedules/{schedule['id']}")


def test_trigger_fires_now_and_keeps_the_next_slot(client, worker_process):
    schedule = create(client, input_file_id=upload(client, classify_lines(3)), paused=True)
    assert schedule["paused"] and schedule["next_run_at"] is None
    batch = client.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert batch.status_code == 200, batch.text
    batch = batch.json()
    assert batch["object"] == "batch" and batch["status"] == "validating" and batch["endpoint"] == "/classify"
    assert batch["input_file_id"] == schedule["input_file_id"]  # its lines already name the model: reused as is
    after = client.get(f"/v1/schedules/{schedule['id']}").json()
    assert after["last_batch_id"] == batch["id"] and after["paused"] and after["next_run_at"] is None
    assert client.wait_batch(batch["id"])["request_counts"]["completed"] == 3

    client.delete(f"/v1/files/{schedule['input_file_id']}")
    gone = client.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert gone.status_code == 409 and "was deleted" in gone.json()["error"]["message"]
    client.delete(f"/v1/schedules/{schedule['id']}")


def test_a_selection_schedule_reprocesses_past_jobs(client, db, poolq, worker_process):
    tag = secrets.token_hex(4)
    jobs = []
    for i, text in enumerate(["great product", ["awful", "fine"], "meh"]):
        response = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": text,
                                                 "metadata": {"suite": tag}})
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])
    others = [  # left out: another task, other metadata
        client.post("/v1/jobs", json={"task": "score", "model": "ce", "text_1": "q", "text_2": "d",
                                      "metadata": {"suite": tag}}).json()["id"],
        client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x",
                                      "metadata": {"suite": "other"}}).json()["id"]]
    results = {job_id: client.wait_job(job_id)["result"] for job_id in jobs + others}
    schedule = create(client, selection={"model": "tiny", "status": "succeeded", "since": "1h",
                                         "metadata": {"suite": tag}})
    assert schedule["selection"] == {"model": "tiny", "task": None, "status": "succeeded", "since": "1h",
                                     "metadata": {"suite": tag}}
    make_due(db, schedule["id"], dt.timedelta(seconds=1))
    assert poolq.celery.tasks["poolq.fire_schedules"]() == 1
    batch_id = client.get(f"/v1/schedules/{schedule['id']}").json()["last_batch_id"]
    done = client.wait_batch(batch_id)
    assert done["status"] == "completed" and done["request_counts"]["total"] == 3, done
    lines = output(client, done)
    assert [o["custom_id"] for o in lines] == jobs  # oldest first, the job ids
    for line in lines:
        got, want = line["response"]["body"], results[line["custom_id"]]
        assert [d["label"] for d in got["data"]] == [d["label"] for d in want["data"]]
        for a, b in zip(got["data"], want["data"]):
            assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)

    # A score job's stored request (data_1/data_2 and its options) is a valid /v1/score body too.
    scores = create(client, endpoint="/v1/score", model="ce", selection={"metadata": {"suite": tag}})
    scored = client.wait_batch(client.post(f"/v1/schedules/{scores['id']}/trigger").json()["id"])
    [line] = output(client, scored)
    assert line["custom_id"] == others[0] and scored["request_counts"]["completed"] == 1
    assert line["response"]["body"]["data"][0]["score"] == pytest.approx(
        results[others[0]]["data"][0]["score"], abs=1e-5)

    empty = create(client, selection={"metadata": {"suite": "never-" + tag}})
    refused = client.post(f"/v1/schedules/{empty['id']}/trigger")
    assert refused.status_code == 409 and "matched no job" in refused.json()["error"]["message"]
    make_due(db, empty["id"], dt.timedelta(seconds=1))
    assert poolq.celery.tasks["poolq.fire_schedules"]() == 0
    skipped = client.get(f"/v1/schedules/{empty['id']}").json()
    assert "matched no job" in skipped["last_error"] and skipped["last_batch_id"] is None
    assert skipped["next_run_at"] > time.time()  # the slot passed; the next one stands
    for s in (schedule, scores, empty):
        client.delete(f"/v1/schedules/{s['id']}")


def test_schedules_are_scoped_to_the_tenant(client, other_client):
    schedule = create(client, input_file_id=upload(client, classify_lines(1)))
    sid = schedule["id"]
    assert other_client.get(f"/v1/schedules/{sid}").status_code == 404
    for verb in ("pause", "resume", "trigger"):
        assert other_client.post(f"/v1/schedules/{sid}/{verb}").status_code == 404
    assert other_client.delete(f"/v1/schedules/{sid}").status_code == 404
    assert all(s["id"] != sid for s in other_client.get("/v1/schedules").json()["data"])
    assert client.get(f"/v1/schedules/{sid}").json()["paused"] is False
    client.delete(f"/v1/schedules/{sid}")


def test_the_cli_over_http(client, api_url, api_keys, worker_process):
    file_id = upload(client, classify_lines(2))
    env = {**os.environ, "POOLQ_URL": api_url, "POOLQ_API_KEY": api_keys["alpha"]}

    def poolq_cli(*args, check=True):
        done = subprocess.run([sys.executable, "-m", "app.cli", "schedules", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert not check or done.returncode == 0, done.stderr
        return done

    created = poolq_cli("create", "--name", "cli", "--cron", "0 2 * * *", "--tz", "Europe/Paris", "--file", file_id,
                        "--endpoint", "/classify", "--model", "tiny", "--metadata", "via=cli")
    sid = created.stdout.strip()
    assert sid.startswith("sched_") and "next 20" in created.stderr and "+0" in created.stderr
    selected = poolq_cli("create", "--name", "cli-select", "--cron", "@daily", "--select-model", "tiny",
                         "--select-since", "24h", "--select-metadata", "suite=x", "--endpoint", "/classify",
                         "--model", "tiny", "--json")
    assert json.loads(selected.stdout)["selection"]["since"] == "24h"
    listed = poolq_cli("list").stdout
    assert sid in listed and "'0 2 * * *' Europe/Paris" in listed
    assert "paused" in poolq_cli("pause", sid).stdout
    assert client.get(f"/v1/schedules/{sid}").json()["paused"]
    assert "next 20" in poolq_cli("resume", sid).stdout
    batch_id = poolq_cli("trigger", sid).stdout.strip()
    assert batch_id.startswith("batch_") and client.wait_batch(batch_id)["status"] == "completed"
    assert client.get(f"/v1/schedules/{sid}").json()["last_batch_id"] == batch_id

    bad = poolq_cli("create", "--name", "x", "--cron", "0 2 * *", "--file", file_id, "--endpoint", "/classify",
                    "--model", "tiny", check=False)
    assert bad.returncode == 1 and "HTTP 400" in bad.stderr and "five fields" in bad.stderr
    both = poolq_cli("create", "--name", "x", "--cron", "@daily", "--endpoint", "/classify", "--model", "tiny",
                     check=False)
    assert both.returncode == 2 and "exactly one source" in both.stderr
    unauthorized = subprocess.run([sys.executable, "-m", "app.cli", "schedules", "list", "--api-key", "wrong"],
                                  env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert unauthorized.returncode == 1 and "HTTP 401" in unauthorized.stderr
    for schedule_id in (sid, json.loads(selected.stdout)["id"]):
        assert "deleted" in poolq_cli("delete", schedule_id).stdout
    assert client.get(f"/v1/schedules/{sid}").status_code == 404


def test_a_tenant_past_its_schedule_limit_gets_a_400(client, db, poolq):
    from app.errors import APIError
    from app.schedules.schemas import ScheduleCreateRequest
    from app.schedules.services import create_schedule

    file_id = upload(client, classify_lines(1))
    made = create(client, name="limit-1", input_file_id=file_id)
    body = ScheduleCreateRequest.model_validate({"name": "limit-2", "cron": "@daily", "endpoint": "/classify",
                                                 "model": "tiny", "input_file_id": file_id})
    with db() as session:
        tenant_id = session.get(Schedule, made["id"]).tenant_id
        count = session.query(Schedule).filter(Schedule.tenant_id == tenant_id).count()
        with pytest.raises(APIError) as refused:
            create_schedule(session, tenant_id, body, poolq.served, utcnow(), max_per_tenant=count)
        assert refused.value.status == 400 and "limit" in refused.value.message
        assert create_schedule(session, tenant_id, body, poolq.served, utcnow(), max_per_tenant=count + 1).id
        session.rollback()
    client.delete(f"/v1/schedules/{made['id']}")
