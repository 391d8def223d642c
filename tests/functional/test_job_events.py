"""Completion messages: a small result rides with its message, and the synchronous answer built
from it is the stored result, byte for byte."""

from __future__ import annotations

import threading
import uuid
from contextlib import ExitStack

import pytest
from sqlalchemy import text

from app.jobs import events as job_events
from app.jobs.events import RedisJobEvents


def test_a_waiter_gets_its_result_from_the_message_and_others_only_the_notice(redis_url, namespace):
    events = RedisJobEvents(redis_url, namespace)
    with_result, without, bystander = (str(uuid.uuid4()) for _ in range(3))
    body = '{"id": "classify-1", "data": [{"label": "a b", "probs": [0.5, 0.5]}]}'  # spaces included
    with events.expect(with_result) as first, events.expect(without) as second, \
            events.expect(bystander) as third:
        events.publish_many([(with_result, body), without])
        assert first(5, lambda: False) and second(5, lambda: False)
        assert first.result_json == body and second.result_json is None
        assert not third(0.2, lambda: False) and third.result_json is None


def test_a_group_of_completions_is_one_message_that_wakes_each_waiter_with_its_own_result(
        redis_url, namespace, monkeypatch):
    events = RedisJobEvents(redis_url, namespace)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    bodies = {ids[0]: '{"data": [{"label": "a b"}]}', ids[2]: '{"x": "line\\nbreak, escaped"}', ids[4]: "{}"}
    finished = [(job_id, bodies[job_id]) if job_id in bodies else job_id for job_id in ids]
    monkeypatch.setattr(job_events, "GROUP_MESSAGE_MAX", 150)  # two messages, to see the split
    messages = job_events.completion_messages(finished)
    assert len(messages) == 2 and all(m.startswith(job_events.GROUP_MARK + "\n") for m in messages)
    # A listener from before groups reads a group's key as its first line and a half: no job's.
    assert all(m.partition(" ")[0] not in ids for m in messages)
    with ExitStack() as stack:
        waiters = [stack.enter_context(events.expect(job_id)) for job_id in ids]
        events.publish_many(finished)
        for job_id, waiter in zip(ids, waiters):
            assert waiter(5, lambda: False) and waiter.result_json == bodies.get(job_id)


def test_without_a_message_the_waiter_rechecks_and_reads_nothing(redis_url, namespace):
    events = RedisJobEvents(redis_url, namespace)
    done = threading.Event()
    with events.expect(str(uuid.uuid4())) as wait:
        threading.Timer(0.3, done.set).start()
        assert wait(5, done.is_set)  # the recheck, every RECHECK_S, finds it finished
        assert wait.result_json is None


@pytest.mark.usefixtures("worker_process")
def test_the_synchronous_answer_is_the_stored_result_byte_for_byte(client, db):
    response = client.post("/classify", json={"model": "tiny", "input": ["a text with ünïcode and \"quotes\""]})
    assert response.status_code == 200, response.text
    with db() as session:
        stored = session.scalar(text("SELECT CAST(r.body AS TEXT) FROM job_results r WHERE r.body->>'id' = :id"),
                                {"id": response.json()["id"]})
    assert stored is not None and response.text == stored
