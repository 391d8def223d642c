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
