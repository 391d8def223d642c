"""The API with its broker stopped or hung (SIGSTOP): every answer comes fast and tells the truth.

A private redis-server (never the machine's) is the broker of an API of its
own; no worker consumes, so the queue shows exactly what was sent. A 202
means the job's row is committed and either its message is in the queue or
the row is marked unsent (enqueued_at NULL) for the sweeper.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
import requests
from sqlalchemy import select

from app import create_app
from app.config import Settings
from app.jobs.records import Job
from private_servers import PrivateRedis, ServedApp

BOUND_S = 5.0  # the target is ~2 s; measured generously on a shared machine
JOB = {"task": "classify", "model": "tiny", "input": "a sentence"}


@pytest.fixture
def broker():
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(deployment_env, namespace, broker, api_keys):
    env = {**deployment_env, "POOLQ_BROKER_URL": broker.url, "POOLQ_NAMESPACE": f"{namespace}fb{uuid.uuid4().hex[:6]}."}
    served = ServedApp(create_app(Settings.from_env(env)))
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {api_keys['alpha']}"
    served.http = http
    served.queue = served.app.extensions["poolq"].settings.queue_for("tiny")
    yield served
    served.close()


def timed(call, *args, **kwargs) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call(*args, timeout=30, **kwargs)
    return response, time.monotonic() - started


def submit(api, path: str = "/v1/jobs", body: dict = JOB, **kwargs) -> str:
    response, took = timed(api.http.post, api.url + path, json=body, **kwargs)
    assert response.status_code == 202, response.text[:300]
    assert took < BOUND_S, f"{path} took {took:.1f} s"
    return response.json()["id"]


def submit_concurrently(api, count: int) -> list[str]:
    ids, errors = [], []

    def one() -> None:
        try:
            ids.append(submit(api))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [], errors
    return ids


def assert_ready(api, status: int) -> None:
    """/ready's broker check; no worker runs here, so /ready itself stays 503 (no model loaded)."""
    response, took = timed(api.http.get, api.url + "/ready")
    assert response.status_code == 503 and response.headers["Retry-After"], response.text
    assert took < BOUND_S, f"/ready took {took:.1f} s"
    assert (response.json()["checks"]["broker"] == "ok") == (status == 200), response.text


def queued_ids(api, broker) -> str:
    """Every message in the model's queue, as one string to search for job ids."""
    client = redis.Redis.from_url(broker.url)
    return " ".join(m.decode() for m in client.lrange(api.queue, 0, -1))


def assert_sent_or_unsent(api, broker, db, ids: list[str]) -> None:
    """Every accepted job exists, and will run: it is in the queue, or the sweeper will send it."""
    queued = queued_ids(api, broker)
    with db() as session:
        rows = dict(session.execute(select(Job.id, Job.enqueued_at).where(Job.id.in_([uuid.UUID(i) for i in ids]))
                                    ).all())
    assert len(rows) == len(set(ids))
    for job_id, enqueued_at in rows.items():
        assert str(job_id) in queued or enqueued_at is None, job_id


def is_sent(api, broker, db, job_id: str) -> bool:
    with db() as session:
        enqueued_at = session.scalar(select(Job.enqueued_at).where(Job.id == uuid.UUID(job_id)))
    return enqueued_at is not None and job_id in queued_ids(api, broker)


def test_a_hung_broker_costs_a_bounded_wait_and_loses_no_job(api, broker, db):
    assert is_sent(api, broker, db, submit(api))
    assert_ready(api, 200)
    broker.pause()
    try:
        assert_ready(api, 503)
        accepted = submit_concurrently(api, 6)
        accepted.append(submit(api))
        # A synchronous pooling request whose send failed answers 202 at once: it cannot finish before a resend.
        accepted.append(submit(api, "/classify", {"model": "tiny", "input": "a sentence"}))
        assert_ready(api, 503)
    finally:
        broker.resume()
    assert_ready(api, 200)
    after = submit(api)
    assert is_sent(api, broker, db, after)  # the first send after the broker is back goes through
    assert_sent_or_unsent(api, broker, db, accepted + [after])


def test_a_stopped_broker_is_answered_fast_and_the_first_send_after_its_restart_succeeds(api, broker, db):
    assert is_sent(api, broker, db, submit(api))
    broker.stop()
    accepted = submit_concurrently(api, 4)
    accepted.append(submit(api, "/score", {"model": "ce", "text_1": "a", "text_2": "b"},
                           headers={"Prefer": "respond-async"}))
    assert_ready(api, 503)
    with db() as session:
        unsent = session.scalars(select(Job.id).where(Job.id.in_([uuid.UUID(i) for i in accepted]),
                                                      Job.enqueued_at.is_(None))).all()
    assert len(unsent) == len(accepted)  # refused at once, so flagged for the sweeper
    broker.start()
    after = submit(api)  # the pooled connections died with the old server; this must not fail
    assert is_sent(api, broker, db, after)
    assert_ready(api, 200)


REFUSE_UNSENT = """
CREATE OR REPLACE FUNCTION poolq_test_refuse_unsent() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'injected: the database fails after the broker did';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER poolq_test_refuse_unsent BEFORE UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.enqueued_at IS NOT NULL AND NEW.enqueued_at IS NULL AND NEW.metadata->>'fault' = 'refuse-unsent')
    EXECUTE FUNCTION poolq_test_refuse_unsent();
"""


@pytest.fixture
def unsent_refused(db):
    """Postgres refuses to flag jobs tagged {"fault": "refuse-unsent"} as unsent; other jobs are untouched."""
    with db() as session:
        session.connection().exec_driver_sql(REFUSE_UNSENT)
        session.commit()
    yield
    with db() as session:
        session.connection().exec_driver_sql("DROP TRIGGER poolq_test_refuse_unsent ON jobs;"
                                             "DROP FUNCTION poolq_test_refuse_unsent()")
        session.commit()


def test_a_committed_job_is_a_202_even_when_flagging_it_unsent_fails(api, broker, db, unsent_refused):
    """The broker refuses the send, then the database refuses the bookkeeping: the job exists, so 202."""
    broker.stop()
    job_id = submit(api, body={**JOB, "metadata": {"fault": "refuse-unsent"}})
    with db() as session:
        job = session.get(Job, uuid.UUID(job_id))
        # Still flagged as sent: the sweeper resends it once that is older than POOLQ_REQUEUE_AFTER_S.
        assert job is not None and job.status == "queued" and job.enqueued_at is not None
