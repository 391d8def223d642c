"""Acking a group of messages in one round trip leaves kombu's Redis state as acking each would."""

from __future__ import annotations

import secrets
import time

import redis
from kombu import Connection

from workers.scheduler.acks import ack_all


def test_a_group_ack_clears_the_unacked_state_and_nothing_comes_back(redis_url, namespace):
    queue = f"{namespace}acks.{secrets.token_hex(3)}"
    # A short visibility timeout: anything left unacked would be restored within the test.
    options = {"visibility_timeout": 1, "global_keyprefix": namespace}
    with Connection(redis_url, transport_options=options) as connection:
        simple = connection.SimpleQueue(queue)
        try:
            for i in range(5):
                simple.put({"n": i})
            got = [simple.get(timeout=5) for _ in range(5)]
            qos = got[0].channel.qos
            client = redis.Redis.from_url(redis_url)
            unacked = f"{namespace}{qos.unacked_key}"
            assert client.hlen(unacked) == 5 and len(qos._delivered) == 5

            ack_all(got[:4])
            assert [m.acknowledged for m in got] == [True] * 4 + [False]
            assert client.hlen(unacked) == 1  # only the one not in the group
            ack_all(got[4:])  # a group of one: kombu's own ack
            assert client.hlen(unacked) == 0
            assert client.zcard(f"{namespace}{qos.unacked_index_key}") == 0

            time.sleep(1.2)  # past the visibility timeout: what is still unacked would be restored now
            qos.restore_visible(num=100)  # what a consumer does for messages past their timeout
            assert client.llen(f"{namespace}{queue}") == 0
            ack_all(got)  # acked already: nothing is sent again, nothing raises
        finally:
            simple.close()


def test_messages_of_other_transports_are_acked_one_by_one():
    class Message:
        acked = 0

        def ack(self):
            self.acked += 1

    messages = [Message() for _ in range(3)]
    ack_all(messages)
    assert [m.acked for m in messages] == [1, 1, 1]


def test_a_channel_reuses_one_client_and_its_messages_still_ack(redis_url, namespace):
    from workers.scheduler.redis_channel import reuse_client

    queue = f"{namespace}client.{secrets.token_hex(3)}"
    with Connection(redis_url, transport_options={"global_keyprefix": namespace}) as connection:
        simple = connection.SimpleQueue(queue)
        try:
            channel = simple.channel
            assert channel._create_client() is not channel._create_client()  # kombu's own: one per call
            reuse_client(channel)
            reuse_client(channel)  # twice: still the one wrapper
            assert channel._create_client() is channel._create_client()
            assert channel._create_client(asynchronous=True) is not channel._create_client()
            for i in range(3):
                simple.put({"n": i})
            got = [simple.get(timeout=5) for _ in range(3)]  # each delivery writes the unacked index
            client = redis.Redis.from_url(redis_url)
            unacked = f"{namespace}{channel.qos.unacked_key}"
            assert client.hlen(unacked) == 3
            got[0].ack()
            ack_all(got[1:])
            assert client.hlen(unacked) == 0
        finally:
            simple.close()


def _batched_consumer(connection, queue, prefetch=None):
    """A kombu consumer on `queue` whose channel reads in batches; what it saw, read by read."""
    from kombu import Consumer, Queue

    from workers.scheduler.redis_channel import batch_reads

    channel = connection.channel()
    reads: list[list] = []
    current: list = []

    def begin():
        current.clear()

    def end():
        reads.append(list(current))

    consumer = Consumer(channel, [Queue(queue)], callbacks=[lambda body, message: current.append(message)],
                        accept=["json"])
    if prefetch:
        consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    batch_reads(channel, begin, end)
    batch_reads(channel, begin, end)  # twice: still one wrapper
    return channel, reads


def test_a_batched_read_takes_the_waiting_messages_at_once_and_records_them_as_kombu_does(redis_url, namespace):
    queue = f"{namespace}batched.{secrets.token_hex(3)}"
    with Connection(redis_url, transport_options={"visibility_timeout": 1}) as connection:
        producer = connection.Producer()
        for i in range(10):
            producer.publish({"n": i}, routing_key=queue, declare=[], serializer="json")
        channel, reads = _batched_consumer(connection, queue)
        connection.drain_events(timeout=5)
        assert len(reads) == 1 and [m.payload["n"] for m in reads[0]] == list(range(10))  # one read, in order
        qos = channel.qos
        client = redis.Redis.from_url(redis_url)
        tags = [m.delivery_tag for m in reads[0]]
        records = client.hmget(qos.unacked_key, tags)
        # kombu's own record of an unacked message: [message, exchange, routing key], with its score
        import json

        assert [json.loads(r) for r in records] == [[m._raw, "", queue] for m in reads[0]]
        assert all(client.zscore(qos.unacked_index_key, t) for t in tags)
        assert len(qos._delivered) == 10

        ack_all(reads[0][:9])
        # The tenth, never acked (its worker died), comes back through kombu's own restore.
        time.sleep(1.2)
        qos.restore_visible(num=100)
        assert client.hlen(qos.unacked_key) == 0 or tags[9].encode() not in client.hkeys(qos.unacked_key)
        assert client.llen(queue) == 1
        connection.drain_events(timeout=5)
        assert [m.payload["n"] for m in reads[1]] == [9]
        ack_all(reads[1])
        assert client.hget(qos.unacked_key, tags[9]) is None


def test_a_batched_read_keeps_to_the_prefetch_window(redis_url, namespace):
    queue = f"{namespace}batched.{secrets.token_hex(3)}"
    with Connection(redis_url) as connection:
        producer = connection.Producer()
        for i in range(7):
            producer.publish({"n": i}, routing_key=queue, declare=[], serializer="json")
        channel, reads = _batched_consumer(connection, queue, prefetch=3)
        connection.drain_events(timeout=5)
        assert [m.payload["n"] for m in reads[0]] == [0, 1, 2]
        client = redis.Redis.from_url(redis_url)
        assert client.llen(queue) == 4  # the rest still waits in the queue, not popped
        ack_all(reads[0])
        connection.drain_events(timeout=5)
        assert [m.payload["n"] for m in reads[1]] == [3, 4, 5]
        ack_all(reads[1])
        connection.drain_events(timeout=5)
        ack_all(reads[2])
        assert [m.payload["n"] for m in reads[2]] == [6]
        assert client.hlen(channel.qos.unacked_key) == 0 or not any(
            client.hexists(channel.qos.unacked_key, m.delivery_tag) for r in reads for m in r)
