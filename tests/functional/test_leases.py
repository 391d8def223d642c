"""Leases and the group path under faults: kill -9 at every step, take-over, the attempt cap,
late writes, cancel, SIGTERM, and no re-sends without a fault.

Each test runs its own `poolq worker` processes on a namespace of its own (so
killing one never disturbs the shared worker) with short leases (2 s) and a
short broker redelivery (5 s), so recovery takes seconds here as it takes
well under a minute with the defaults.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import psycopg
import pytest
from sqlalchemy import func, select

from app import create_app
from app.celery import SWEEP_JOBS
from app.config import Settings
from app.jobs import claims
from app.jobs.records import Job, JobResult
from test_recovery import Worker, own_model

# The tiny model under a name of its own: the suite's shared worker takes over lapsed
# leases of the models it serves, and must not take these tests' jobs.
MODEL = "tinylease"

FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def lease_env(deployment_env, namespace):
    return {**deployment_env, "POOLQ_NAMESPACE": f"{namespace}lease{uuid.uuid4().hex[:6]}.", "POOLQ_LEASE_S": "2",
            "POOLQ_REDELIVER_AFTER_S": "5", "POOLQ_MODELS": own_model(deployment_env, MODEL),
            "POOLQ_WORKER_METRICS_PORT": "0"}  # the shared worker holds the metrics port


@pytest.fixture
def api(lease_env, api_keys):
    app = create_app(Settings.from_env(lease_env))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    client.celery, client.settings = app.extensions["celery"], app.extensions["poolq"].settings
    return client


@pytest.fixture
def workers(lease_env, tmp_path):
    started: list[Worker] = []

    def start(**extra) -> Worker:
        worker = Worker({**os.environ, **lease_env, **extra}, tmp_path / f"worker{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def submit(api, texts: list[str]) -> str:
    response = api.post("/v1/jobs", json={"task": "classify", "model": MODEL, "input": texts})
    assert response.status_code == 202, response.json
    return response.json["id"]


def wait_all(db, ids: list[str], timeout: float = 90, api=None) -> dict[str, Job]:
    """Wait until every job is finished; with `api`, send the job sweep now and then, as beat does."""
    keys = [uuid.UUID(i) for i in ids]
    deadline = time.monotonic() + timeout
    next_sweep = 0.0
    while True:
        if api is not None and time.monotonic() > next_sweep:
            api.celery.send_task(SWEEP_JOBS, queue=api.settings.maintenance_queue)
            next_sweep = time.monotonic() + 1
        with db() as session:
            jobs = {str(j.id): j for j in session.scalars(select(Job).where(Job.id.in_(keys)))}
        if all(j.status in FINISHED for j in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.1)


def results_per_job(db, ids: list[str]) -> dict[str, int]:
    with db() as session:
        rows = session.execute(select(JobResult.job_id, func.count()).where(
            JobResult.job_id.in_([uuid.UUID(i) for i in ids])).group_by(JobResult.job_id)).all()
    return {str(job_id): n for job_id, n in rows}


@pytest.mark.parametrize("step", ["claimed", "computed", "committed"])
def test_kill_at_any_step_of_the_group_path_loses_and_duplicates_nothing(step, api, workers, db):
    ids = [submit(api, [f"one text, job {i}"]) for i in range(12)] + [submit(api, ["a longer job"] * 3000)]
    first = workers(POOLQ_FAILPOINT=step)
    assert first.proc.wait(timeout=120) == -signal.SIGKILL  # died at the failpoint
    # A message the broker popped for the dead worker but had not yet recorded as
    # delivered is gone (kombu's Redis transport); its job's row is not: the
    # sweep re-sends a queued job once its queue is empty.
    second = workers(POOLQ_REQUEUE_AFTER_S="3")
    second.wait_ready()
    jobs = wait_all(db, ids, api=api)
    assert {j.status for j in jobs.values()} == {"succeeded"}, {i: j.status for i, j in jobs.items()}
    assert results_per_job(db, ids) == {i: 1 for i in ids}
    # Stored before the kill: never run again. Held at the kill: run once more, by the second worker.
    assert all(j.attempts <= 2 for j in jobs.values())
    if step == "committed":  # the first group's write committed: those jobs stay the first worker's
        assert any(j.attempts == 1 and j.worker.split(":")[1] == str(first.proc.pid) for j in jobs.values())
    big = api.get(f"/v1/jobs/{ids[-1]}").json
    assert [d["index"] for d in big["result"]["data"]] == list(range(3000))


def test_a_job_whose_worker_dies_on_every_attempt_fails_after_the_cap(api, workers, db):
    job_id = submit(api, ["this job kills its worker"])
    for attempt in (1, 2, 3):
        worker = workers(POOLQ_FAILPOINT="claimed", POOLQ_MAX_ATTEMPTS="3")
        assert worker.proc.wait(timeout=120) == -signal.SIGKILL
        with db() as session:
            assert session.get(Job, uuid.UUID(job_id)).attempts == attempt
    survivor = workers(POOLQ_MAX_ATTEMPTS="3")
    survivor.wait_ready()
    job = wait_all(db, [job_id])[job_id]
    assert job.status == "failed" and job.attempts == 3
    assert "attempted 3 times" in job.error["message"] and job.error["code"] == 500
    assert api.get(f"/v1/jobs/{job_id}").json["error"]["type"] == "InternalServerError"


def test_a_lapsed_lease_hands_the_job_over_and_the_old_holders_late_write_is_refused(api, db):
    job_id = uuid.UUID(submit(api, ["held twice"]))  # no worker consumes this namespace
    with db() as session:
        [old] = claims.claim(session, [job_id], "old-worker", lease_s=0.05, max_attempts=3)
        session.commit()
    with db() as session:  # a live lease is not taken over
        assert all(t.id != job_id for t in claims.take_over(session, "new-worker", [MODEL], 30, 3))
        session.rollback()
    time.sleep(0.1)
    with db() as session:
        taken = claims.take_over(session, "new-worker", [MODEL], lease_s=30, max_attempts=3)
        session.commit()
    assert [t.id for t in taken] == [job_id] and taken[0].attempt == old.attempt + 1
    late = claims.Outcome(job_id, old.attempt, "succeeded", body={"from": "old"}, prompt_tokens=1)
    with db() as session:
        assert claims.finish(session, "old-worker", [late]) == []
        assert claims.claim(session, [job_id], "third", lease_s=30, max_attempts=3) == []  # held, live
        session.commit()
    new = claims.Outcome(job_id, taken[0].attempt, "succeeded", body={"from": "new"}, prompt_tokens=1)
    with db() as session:
        assert claims.finish(session, "new-worker", [new]) == [new]
        session.commit()
    with db() as session:
        assert session.get(JobResult, job_id).body == {"from": "new"}
        assert claims.finish(session, "new-worker", [new]) == []  # a second write changes nothing


def test_a_group_write_writes_only_what_it_holds_at_its_attempt(api, db):
    """One statement writes a group: each job's status, tokens, error and result, and none of a
    job another worker holds now or that this worker holds at another attempt."""
    ids = [uuid.UUID(submit(api, [f"group {i}"])) for i in range(5)]
    with db() as session:
        held = {c.id: c for c in claims.claim(session, ids, "writer", lease_s=30, max_attempts=3)}
        session.commit()
    assert set(held) == set(ids)
    ok, failed, stale, elsewhere, ok_too = ids
    with db() as session:
        session.execute(Job.__table__.update().where(Job.id == elsewhere).values(worker="someone-else"))
        session.commit()
    body = {"data": [{"label": "positive", "text": "quotes \" and \u00e9"}], "n": 2**70}
    error = {"message": "bad input", "type": "BadRequestError", "param": None, "code": 400}
    outcomes = [claims.Outcome(ok, held[ok].attempt, "succeeded", body=body, prompt_tokens=7),
                claims.Outcome(failed, held[failed].attempt, "failed", error=error),
                claims.Outcome(stale, held[stale].attempt + 1, "succeeded", body={"stale": True}, prompt_tokens=1),
                claims.Outcome(elsewhere, held[elsewhere].attempt, "succeeded", body={"no": 1}, prompt_tokens=1),
                claims.Outcome(ok_too, held[ok_too].attempt, "succeeded", body={"k": [1, 2]}, prompt_tokens=3)]
    with db() as session:
        won = claims.finish(session, "writer", outcomes)
        session.commit()
    assert {o.job_id for o in won} == {ok, failed, ok_too}
    with db() as session:
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
        results = {r.job_id: r.body for r in session.scalars(select(JobResult).where(JobResult.job_id.in_(ids)))}
    assert results == {ok: body, ok_too: {"k": [1, 2]}}
    assert (jobs[ok].status, jobs[ok].prompt_tokens, jobs[ok].error) == ("succeeded", 7, None)
    assert (jobs[failed].status, jobs[failed].prompt_tokens, jobs[failed].error) == ("failed", None, error)
    assert jobs[ok].finished_at is not None and jobs[ok].lease_expires_at is None
    for job_id in (stale, elsewhere):
        assert jobs[job_id].status == "running" and jobs[job_id].finished_at is None


def test_a_live_lease_is_not_taken_over(api, db):
    job_id = uuid.UUID(submit(api, ["held"]))
    with db() as session:
        claims.claim(session, [job_id], "live-worker", lease_s=30, max_attempts=3)
        session.commit()
    with db() as session:
        assert all(t.id != job_id for t in claims.take_over(session, "other", [MODEL], 30, 3))
        assert claims.renew(session, "live-worker", 30) == {job_id}
        session.rollback()


def test_renewing_leases_locks_the_rows_in_id_order_as_the_group_write_does(api, db, pg_url):
    """The heartbeat's renew and the writer's group finish lock the same rows. The finish locks
    them in id order; a renew that went in table order could hold one and wait for another the
    finish held while the finish waited for the first: a deadlock, found by Postgres only after
    its deadlock_timeout (1 s), and a group of finished jobs held up that long."""
    worker = f"renewer-{uuid.uuid4().hex[:8]}"
    first, second = (uuid.UUID(submit(api, [text])) for text in ("one", "two"))
    low, high = uuid.UUID(int=uuid.uuid4().int >> 1), uuid.UUID(int=(1 << 127) | uuid.uuid4().int)
    with db() as session:
        # New ids, updated high first: the rows now lie in the table in the opposite order of their ids.
        session.execute(Job.__table__.update().where(Job.id == first).values(id=high))
        session.execute(Job.__table__.update().where(Job.id == second).values(id=low))
        session.commit()
    with db() as session:
        assert {c.id for c in claims.claim(session, [low, high], worker, lease_s=30, max_attempts=3)} == {low, high}
        session.commit()
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as holder, psycopg.connect(plain, autocommit=True) as probe:
        holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (low,))  # as the writer would
        renewed: list = []

        def renew() -> None:
            with db() as session:
                renewed.append(claims.renew(session, worker, 30))
                session.commit()

        thread = threading.Thread(target=renew)
        thread.start()
        deadline = time.monotonic() + 10
        while not probe.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                                ("%lease_expires_at%",)).fetchone():
            assert time.monotonic() < deadline, "the renew never waited for the held row"
            time.sleep(0.01)
        # Waiting for the lowest id, the renew holds no other row yet.
        probe.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE NOWAIT", (high,))
        holder.rollback()
    thread.join(timeout=10)
    assert renewed == [{low, high}]


def a_running_big_job(api) -> str:
    """A 20k-text job, submitted and seen running with slices in the engine."""
    job_id = submit(api, [f"a sentence to classify, number {i} " * 4 for i in range(20000)])
    deadline = time.monotonic() + 60
    while api.get(f"/v1/jobs/{job_id}").json["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # slices are in the engine
    return job_id


def stop_a_running_job(api, workers, db, stop) -> str:
    """A big job running on a worker of its own; `stop(job_id)` takes it away; the worker must
    drop it within seconds and go on serving. Returns the job id."""
    worker = workers()
    worker.wait_ready()
    job_id = a_running_big_job(api)
    stop(job_id)
    deadline = time.monotonic() + 10
    while f"job {job_id} is no longer ours" not in worker.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"job {job_id} is no longer ours" in worker.log.read_text()
    after = submit(api, ["right after it stopped"])
    assert wait_all(db, [after], timeout=30)[after].status == "succeeded"
    return job_id


def cancel_and_see_it_stopped_before_its_end(api, worker, db, job_id: str) -> None:
    """Cancel a big job through the API; its worker must drop it, not run it to its end (where
    its write would be refused), and nothing of it is written."""
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    deadline = time.monotonic() + 20
    while f"job {job_id} is no longer ours" not in worker.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log_text = worker.log.read_text()
    assert f"job {job_id} is no longer ours" in log_text
    assert f"job {job_id} was finished elsewhere" not in log_text  # it did not run to its end
    assert results_per_job(db, [job_id]) == {}


def test_cancel_stops_a_running_job_at_its_next_slice(api, workers, db):
    def cancel(job_id: str) -> None:
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    job_id = stop_a_running_job(api, workers, db, cancel)
    job = api.get(f"/v1/jobs/{job_id}").json
    assert job["status"] == "cancelled" and job["result"] is None


def test_a_cancel_reaches_the_running_worker_at_once_not_at_its_next_heartbeat(api, workers, db):
    """The API announces a cancel on Redis, and the worker running the job drops it at its next
    slice. This worker's heartbeat, the only other way it learns of a cancel, comes every 30 s:
    without the announcement the job would run to its end (its result then refused) first."""
    worker = workers(POOLQ_LEASE_S="90")
    worker.wait_ready()
    job_id = a_running_big_job(api)
    cancel_and_see_it_stopped_before_its_end(api, worker, db, job_id)


def test_a_running_job_whose_row_is_deleted_stops_at_its_next_slice(api, workers, db):
    """The API refuses to delete an unfinished job (cancel first), but its row can still go
    while it runs (its tenant removed: ON DELETE CASCADE): the worker stops and writes nothing."""
    from sqlalchemy import delete

    def delete_row(job_id: str) -> None:
        with db() as session:
            session.execute(delete(Job).where(Job.id == uuid.UUID(job_id)))
            session.commit()

    job_id = stop_a_running_job(api, workers, db, delete_row)
    assert results_per_job(db, [job_id]) == {}


def test_sigterm_finishes_within_the_grace_and_gives_the_rest_back(api, workers, db):
    first = workers(POOLQ_SHUTDOWN_GRACE_S="1")
    first.wait_ready()
    small = submit(api, ["done before the stop"])
    assert wait_all(db, [small])[small].status == "succeeded"
    big = submit(api, [f"a long job's sentence number {i} " * 8 for i in range(30000)])
    deadline = time.monotonic() + 60
    while api.get(f"/v1/jobs/{big}").json["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 20
    assert "gave back 1 job(s)" in first.log.read_text()
    with db() as session:
        job = session.get(Job, uuid.UUID(big))
        assert job.status in ("queued", "running") and job.attempts <= 1
    second = workers()
    second.wait_ready()
    job = wait_all(db, [big], timeout=120)[big]
    assert job.status == "succeeded" and results_per_job(db, [big]) == {big: 1}


def test_a_job_whose_message_a_worker_holds_unclaimed_is_not_re_sent(api, workers, db):
    """Between a worker's read (up to 64 messages at once) and its claim, a job is still
    `queued` and its queue may be empty: its message is in the broker's unacked record, not
    lost, and the sweep must not send it again."""
    job_id = submit(api, ["taken off the queue, not claimed yet"])
    with api.celery.connection_for_write() as conn:
        held = conn.SimpleQueue(api.settings.queue_for(MODEL))
        message = held.get(timeout=10)  # off the list, recorded unacked, as a worker's read does
        time.sleep(1.2)  # past POOLQ_REQUEUE_AFTER_S below: aged, and its queue is empty
        # A long redelivery: the broker would otherwise give the message back to the worker
        # by itself once it is older than that, while the worker starts.
        worker = workers(POOLQ_REQUEUE_AFTER_S="1", POOLQ_REDELIVER_AFTER_S="120")
        worker.wait_ready()
        for _ in range(5):
            api.celery.send_task(SWEEP_JOBS, queue=api.settings.maintenance_queue)
            time.sleep(0.3)
        client = conn.default_channel.client
        deadline = time.monotonic() + 30
        while client.llen(api.settings.maintenance_queue) and time.monotonic() < deadline:
            time.sleep(0.1)  # the worker has taken every sweep
        time.sleep(1.0)  # and run them: a re-sent message would have been claimed and run by now
        assert "re-sent" not in worker.log.read_text()
        with db() as session:
            assert session.get(Job, uuid.UUID(job_id)).status == "queued"
        message.requeue()  # the holder gives it back, as kombu restores a dead worker's messages
        held.close()
    job = wait_all(db, [job_id])[job_id]
    assert job.status == "succeeded" and job.attempts == 1
    assert "re-sent" not in worker.log.read_text()


def test_no_job_is_sent_twice_without_a_fault(api, workers, db, lease_env):
    ids = [submit(api, [f"queued before any worker {i}"]) for i in range(300)]
    time.sleep(1.2)  # past POOLQ_REQUEUE_AFTER_S below: aged, but their messages wait in the queue
    worker = workers(POOLQ_REQUEUE_AFTER_S="1")
    worker.wait_ready()
    for _ in range(5):
        api.celery.send_task(SWEEP_JOBS, queue=api.settings.maintenance_queue)
        time.sleep(0.2)
    jobs = wait_all(db, ids)
    assert {j.status for j in jobs.values()} == {"succeeded"}
    assert {j.attempts for j in jobs.values()} == {1}
    assert "re-sent" not in worker.log.read_text()


def test_a_cancel_announced_while_its_job_is_being_claimed_still_stops_it(api, workers, db):
    """The claim has committed but the worker does not hold the job yet (stalled there 3 s by a
    failpoint) when the cancel is announced: the listener finds nothing to stop. The claim then
    checks the cancels heard since it began, so the job stops at its first slice instead of
    running to its end (the heartbeat, the other way to learn of it, comes every 30 s here)."""
    worker = workers(POOLQ_LEASE_S="90", POOLQ_FAILPOINT="claimed:pause")
    worker.wait_ready()
    job_id = submit(api, [f"a sentence to classify, number {i} " * 4 for i in range(20000)])
    deadline = time.monotonic() + 30
    while "failpoint claimed: pausing" not in worker.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert api.get(f"/v1/jobs/{job_id}").json["status"] == "running"  # claimed, committed, not held yet
    cancel_and_see_it_stopped_before_its_end(api, worker, db, job_id)
