"""One redis client object per kombu Redis channel, instead of one per call.

kombu's Redis channel builds a new `redis.Redis` around its connection pool
for every call it makes outside BRPOP: the unacked-index write for each
message delivered, each ack. Building one costs about 170 us (its response
callbacks are copied into a new dict each time), on the consumer's thread,
the worker's busiest: an eighth of what a one-text job costs it there. A
client is only a handle on the pool (each call checks out a connection of
its own, so it is safe from any thread), so the channel's consumer reuses
one. Set on the channel object only, after kombu made it; a channel made on
a reconnect is a new object and gets its own.
"""
from __future__ import annotations

from kombu.transport import redis as kombu_redis


def reuse_client(channel) -> None:
    """Make `channel` hand out one client for its pool (a no-op for other transports, or twice)."""
    if not isinstance(channel, kombu_redis.Channel) or "_create_client" in vars(channel):
        return
    make = channel._create_client  # kombu's, bound to this channel

    def _create_client(asynchronous=False):
        if asynchronous:
            return make(asynchronous=True)
        client = channel.__dict__.get("_poolq_client")
        if client is None or client.connection_pool is not channel.pool:
            client = channel._poolq_client = make()
        return client

    channel._create_client = _create_client
