"""The hot sends' own messages read back by kombu's and Celery's real consumer code as send_task's do."""

from __future__ import annotations

import secrets

import pytest
import redis
from celery import Celery

from app.task_messages import TaskPublisher, publisher_for, send_task


def _celery(broker_url: str, **conf) -> Celery:
    celery = Celery("test_task_messages")
    celery.conf.update(broker_url=broker_url, task_serializer="json", accept_content=["json"],
                       task_ignore_result=True, result_backend=None, **conf)
    return celery


def _read(celery: Celery, queue: str):
    with celery.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        try:
            message = simple.get(timeout=5)
            message.ack()
            return message
        finally:
            simple.close()


@pytest.mark.parametrize("task,args,kwargs", [
    ("poolq.run_job", ["0b7e9d7c-3d7e-4a47-9d77-5a2a1f8c6c11"], {"model": "tiny", "task": "classify"}),
    ("poolq.run_batch_chunk", ["batch_0123456789abcdef01234567", 3], {"model": "tiny"}),
    ("poolq.validate_batch", ["batch_0123456789abcdef01234567"], {}),
])
def test_a_published_message_reads_as_send_tasks_does(redis_url, namespace, task, args, kwargs):
    celery = _celery(redis_url)
    queue = f"{namespace}messages.{secrets.token_hex(3)}"
    try:
        send_task(celery, task, queue, args, kwargs)  # the publisher's path: a plain Redis broker
        ours = _read(celery, queue)
        celery.send_task(task, args=args, kwargs=kwargs, queue=queue)
        theirs = _read(celery, queue)
    finally:
        redis.Redis.from_url(redis_url).delete(queue)
    assert ours.decode() == theirs.decode() == [args, kwargs, {"callbacks": None, "errbacks": None,
                                                               "chain": None, "chord": None}]
    assert set(ours.headers) == set(theirs.headers)
    assert ours.headers["task"] == task and ours.headers["id"] == ours.properties["correlation_id"]
    assert ours.delivery_info["routing_key"] == theirs.delivery_info["routing_key"] == queue
    assert ours.content_type == theirs.content_type == "application/json"


def test_sends_go_through_celery_where_the_fast_path_would_differ(redis_url):
    assert isinstance(publisher_for(_celery(redis_url)), TaskPublisher)
    # Celery's task-sent events, a key prefix, a broker that is not Redis: Celery sends.
    assert publisher_for(_celery(redis_url, task_send_sent_event=True)) is None
    assert publisher_for(_celery(redis_url, broker_transport_options={"global_keyprefix": "x:"})) is None
    assert publisher_for(_celery("amqp://guest@127.0.0.1//")) is None


def test_a_broker_that_is_down_raises_within_the_send_budget():
    with socket_nobody_listens_on() as port:
        celery = _celery(f"redis://127.0.0.1:{port}/0")
        try:
            publisher_for(celery).send("poolq.run_job", "q", ["x"], {})
        except redis.ConnectionError:
            return
    raise AssertionError("a send to a closed port did not raise")


class socket_nobody_listens_on:
    """A port bound (so nothing else takes it) but never listening: connects are refused."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()
