"""Accepted jobs written and sent in groups (app.jobs.intake), on the real database and Redis.

The first submission's INSERT is held at the database's door until every
other submission has queued behind it, so the groups are known: the first
alone, then all the rest in one statement and one LPUSH.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid

import pytest
import redis
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError, OperationalError

from app import create_app
from app.config import Settings
from app.jobs import services
from app.jobs.options import JobOptions
from app.tenants.records import DEFAULT_TENANT_ID
from private_servers import CommitCutter

SUBMISSIONS = 12


def an_app(env: dict, namespace: str):
    # A namespace no worker consumes: the messages stay in the queue to be read here.
    env = {**env, "POOLQ_NAMESPACE": f"{namespace}intake{uuid.uuid4().hex[:6]}."}
    return create_app(Settings.from_env(env)).extensions["poolq"]


def close(poolq) -> None:
    redis.Redis.from_url(poolq.settings.broker_url).delete(poolq.settings.queue_for("tiny"))
    dispose(poolq)


def dispose(poolq) -> None:
    poolq.statement_engine.dispose()
    poolq.request_session_factory.kw["bind"].dispose()
    poolq.db_engine.dispose()


@pytest.fixture
def poolq(deployment_env, namespace):
    poolq = an_app(deployment_env, namespace)
    yield poolq
    close(poolq)


@pytest.fixture
def cut_poolq(deployment_env, namespace, pg_url):
    """An app whose database connections go through a proxy that can cut one."""
    cutter = CommitCutter()
    url = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{cutter.port}/")
    assert url != pg_url
    poolq = an_app({**deployment_env, "POOLQ_DATABASE_URL": url}, namespace)
    yield poolq, cutter
    close(poolq)
    cutter.close()


def a_job(poolq, text: str = "x", job_id: uuid.UUID | None = None):
    request = {"task": "classify", "model": "tiny", "input": [text]}
    return services.new_job(poolq.served.resolve("tiny"), request, DEFAULT_TENANT_ID, JobOptions(), None, job_id)


def inserts_seen(poolq, submissions: int) -> list[int]:
    """Rows per INSERT statement, recorded as they run; the first waits until `submissions`
    submissions are in (the first's own and every other one queued behind it)."""
    rows: list[int] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO jobs"):
            if not rows:
                while len(poolq.intake._waiting) < submissions - 1:
                    threading.Event().wait(0.005)
            ids = parameters.get("id") if isinstance(parameters, dict) else None
            # A row a placeholder (SQLAlchemy's multi-row VALUES), or on Postgres an array of ids.
            rows.append(len(ids) if isinstance(ids, list) else len(re.findall(r"%\(id(?:__\d+)?\)s", statement)))

    event.listen(poolq.statement_engine, "before_cursor_execute", before)
    return rows


def submit_all(poolq, jobs) -> list:
    """Each job's outcome (True/False sent, or the exception raised) from its own thread."""
    outcomes: list = [None] * len(jobs)

    def submit(i):
        try:
            outcomes[i] = poolq.intake.accept(jobs[i])
        except Exception as error:  # noqa: BLE001 - the outcome under test
            outcomes[i] = error

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(jobs))]
    threads[0].start()
    while not poolq.intake._writing:
        threading.Event().wait(0.001)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def kept(poolq, jobs) -> set[uuid.UUID]:
    with poolq.request_session_factory() as session:
        table = services.JOBS_TABLE
        return set(session.scalars(select(table.c.id).where(table.c.id.in_([j.id for j in jobs]))))


def queued_ids(poolq) -> list[str]:
    client = redis.Redis.from_url(poolq.settings.broker_url)
    messages = client.lrange(poolq.settings.queue_for("tiny"), 0, -1)
    from app.task_messages import task_and_args

    return [task_and_args(json.loads(m))[1][0] for m in messages]


def test_submissions_arriving_together_share_one_insert_and_one_send(poolq):
    jobs = [a_job(poolq, f"text {i}") for i in range(SUBMISSIONS)]
    rows = inserts_seen(poolq, SUBMISSIONS)
    outcomes = submit_all(poolq, jobs)
    assert outcomes == [True] * SUBMISSIONS
    assert rows == [1, SUBMISSIONS - 1]  # the first alone (no wait), then everyone queued behind it
    assert kept(poolq, jobs) == {j.id for j in jobs}
    assert sorted(queued_ids(poolq)) == sorted(str(j.id) for j in jobs)  # each sent once


def test_a_row_the_database_refuses_fails_its_own_submission_only(poolq):
    taken = a_job(poolq)
    assert poolq.intake.accept(taken) is True
    jobs = [a_job(poolq, f"text {i}") for i in range(SUBMISSIONS)]
    jobs[5] = a_job(poolq, "same id", job_id=taken.id)  # refused by the primary key, inside a group
    rows = inserts_seen(poolq, SUBMISSIONS)
    outcomes = submit_all(poolq, jobs)
    assert isinstance(outcomes[5], IntegrityError)
    assert outcomes[:5] + outcomes[6:] == [True] * (SUBMISSIONS - 1)
    # The group was refused whole, then written row by row: each job has its own outcome.
    assert rows[:2] == [1, SUBMISSIONS - 1] and rows[2:] == [1] * (SUBMISSIONS - 1)
    others = jobs[:5] + jobs[6:]
    assert kept(poolq, others) == {j.id for j in others}
    assert sorted(queued_ids(poolq)) == sorted(str(j.id) for j in [taken, *others])


@pytest.mark.parametrize("mode", ["after", "before"])
def test_a_group_whose_insert_lost_its_connection_answers_each_job_by_what_was_kept(cut_poolq, mode):
    """The connection of a group's INSERT is cut after the server ran it (every row kept: each
    submission returns as sent) or before (nothing kept: each raises, and no message goes)."""
    poolq, cutter = cut_poolq
    tag = f"cut-group-{mode}-{uuid.uuid4().hex[:8]}"
    jobs = [a_job(poolq, "the first, alone")] + [a_job(poolq, f"{tag} {i}") for i in range(SUBMISSIONS - 1)]
    rows = inserts_seen(poolq, SUBMISSIONS)
    cutter.arm(mode, tag.encode(), autocommit=True)
    outcomes = submit_all(poolq, jobs)
    assert cutter.fired.is_set()
    assert rows == [1, SUBMISSIONS - 1]
    assert outcomes[0] is True
    group = jobs[1:]
    if mode == "after":
        assert outcomes[1:] == [True] * len(group)
        assert kept(poolq, group) == {j.id for j in group}
        assert sorted(queued_ids(poolq)) == sorted(str(j.id) for j in jobs)
    else:
        assert all(isinstance(o, OperationalError) for o in outcomes[1:]), outcomes
        assert kept(poolq, group) == set()
        assert queued_ids(poolq) == [str(jobs[0].id)]


def test_a_group_the_broker_refuses_is_kept_and_answered_unsent(deployment_env, namespace):
    """With the broker away, the rows are committed and every submission of the group says "not
    sent" (the route then flags each for the sweeper and answers 202)."""
    with socket.socket() as closed:  # bound, never listening: connects are refused
        closed.bind(("127.0.0.1", 0))
        env = {**deployment_env, "POOLQ_BROKER_URL": f"redis://127.0.0.1:{closed.getsockname()[1]}/0"}
        poolq = an_app(env, namespace)
        try:
            jobs = [a_job(poolq, f"text {i}") for i in range(SUBMISSIONS)]
            rows = inserts_seen(poolq, SUBMISSIONS)
            outcomes = submit_all(poolq, jobs)
            assert rows == [1, SUBMISSIONS - 1]
            assert outcomes == [False] * SUBMISSIONS
            assert kept(poolq, jobs) == {j.id for j in jobs}
        finally:
            dispose(poolq)
