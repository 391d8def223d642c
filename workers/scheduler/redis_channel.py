"""The consumer's kombu Redis channel, adapted for many small messages: reads in batches, one client.

kombu's Redis consumer takes one message per BRPOP and then records it as
unacked (a ZADD to the unacked index and an HSET of the message, one
MULTI/EXEC pipeline): two round trips per message on the consumer thread,
which was the worker's busiest (about half its time went to the unacked
pipeline alone). `batch_reads` keeps kombu's BRPOP for the first message
(it is what waits while the queue is empty) and then, in one Lua script,
pops up to `BATCH_MAX - 1` more from the same list, within the prefetch
window, and records all of them as unacked exactly as kombu's `QoS.append`
would (the same keys, the same `[message, exchange, routing_key]` record),
so kombu's own redelivery (`restore_visible`), acks and shutdown restore
work on them unchanged. The pop and the records are one atomic script: a
worker killed in between leaves nothing popped and unrecorded (kombu's own
window between BRPOP and its pipeline remains for the first message; the job
sweep covers it, docs/design/worker.md). The messages are then delivered
to Celery's consumer one by one, between `begin` and `end` calls that let
the scheduler take them as one group.

kombu's channel also builds a new `redis.Redis` around its connection pool
for every call it makes outside BRPOP. Building one costs about 170 us (its
response callbacks are copied into a new dict each time). A client is only
a handle on the pool (each call checks out a connection of its own, so it is
safe from any thread), so the channel reuses one (`reuse_client`).

Both are set on the channel object only, after kombu made it; a channel made
on a reconnect is a new object and gets its own. Anything but kombu's Redis
transport is left as it is.
"""
from __future__ import annotations

import logging
from queue import Empty
from time import time
from typing import Callable

import orjson
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)

# The most messages one read hands over (within the prefetch window too): enough to
# make the round trips per message small, few enough that the consumer thread
# returns to its event loop (heartbeats, other queues) within a few milliseconds.
BATCH_MAX = 64

# KEYS: the list BRPOP took the first message from, kombu's unacked index, kombu's unacked hash.
# ARGV: now (the index's score), how many more to pop, the first message.
# Returns {message, recorded (1/0), ...}. A message that is not kombu's JSON envelope is
# returned unrecorded (kombu's own path then handles it as it would have), never dropped.
_POP_AND_RECORD = """
local out = {ARGV[3]}
local more = tonumber(ARGV[2])
if more > 0 then
  local popped = redis.call('RPOP', KEYS[1], more)
  if popped then
    for _, raw in ipairs(popped) do out[#out + 1] = raw end
  end
end
local reply = {}
for _, raw in ipairs(out) do
  local ok, m = pcall(cjson.decode, raw)
  local tag, ex, rk
  if ok and type(m) == 'table' and type(m.properties) == 'table' then
    local p = m.properties
    tag = p.delivery_tag
    if type(p.delivery_info) == 'table' then
      ex, rk = p.delivery_info.exchange, p.delivery_info.routing_key
    end
  end
  if type(tag) == 'string' and type(ex) == 'string' and type(rk) == 'string' then
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    redis.call('HSET', KEYS[3], tag, '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
    reply[#reply + 1] = raw
    reply[#reply + 1] = 1
  else
    reply[#reply + 1] = raw
    reply[#reply + 1] = 0
  end
end
return reply
"""


def _envelope(raw: bytes | str) -> dict:
    """A message's envelope, read as kombu reads it. kombu's JSON loads runs a Python hook on
    every object, for its `__type__` markers (~22 us a run_job message, on the consumer's
    thread, the worker's busiest); text with no such marker is plain JSON (orjson: ~5 us)."""
    if isinstance(raw, str):
        raw = raw.encode()
    if b'"__type__"' not in raw:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # what orjson refuses and Python's json takes (NaN, integers past 64 bits)
    return loads(bytes_to_str(raw))


def _is_redis(channel) -> bool:
    return isinstance(channel, kombu_redis.Channel)


def reuse_client(channel) -> None:
    """Make `channel` hand out one client for its pool (a no-op for other transports, or twice)."""
    if not _is_redis(channel) or "_create_client" in vars(channel):
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


def batch_reads(channel, begin: Callable[[], None], end: Callable[[], None]) -> None:
    """Make `channel` take up to BATCH_MAX messages per read (see the module's docstring);
    `begin()` before their deliveries, `end()` after them, even if one raised."""
    if not _is_redis(channel) or channel.global_keyprefix or "_poolq_batched" in vars(channel):
        return
    channel._poolq_batched = True
    qos = channel.qos
    script = channel._create_client().register_script(_POP_AND_RECORD)
    recorded: set[str] = set()  # tags the script wrote; their append is kombu's in-memory part only
    kombu_append = qos.append

    def append(message, delivery_tag):
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            kombu_virtual.QoS.append(qos, message, delivery_tag)
        else:
            kombu_append(message, delivery_tag)

    qos.append = append

    def read(**options):
        # kombu's _brpop_read up to its delivery (kombu/transport/redis.py)
        client = channel.client
        try:
            try:
                reply = client.parse_response(client.connection, "BRPOP", **options)
            except channel.connection_errors:
                client.connection.disconnect()  # the next turn reconnects
                raise
            if not reply:
                raise Empty()
            dest, first = reply
            queue = bytes_to_str(dest).rsplit(channel.sep, 1)[0]
            channel._queue_cycle.rotate(queue)
        finally:
            channel._in_poll = None
            flush_reauth = getattr(channel, "_flush_brpop_reauth", None)
            if flush_reauth is not None:
                flush_reauth()
        room = qos.can_consume_max_estimate()
        more = max(0, min(BATCH_MAX, room if room is not None else BATCH_MAX) - 1)
        try:
            reply = script(keys=[dest, qos.unacked_index_key, qos.unacked_key], args=[time(), more, first])
        except Exception as exc:  # noqa: BLE001 - this message goes kombu's way, see below
            if not isinstance(exc, channel.connection_errors):
                # A server without RPOP's count (< 6.2) or scripts: kombu's reads from now on.
                # (A connection error keeps batching on: kombu's own append then fails as it
                # would, and the consumer reconnects.)
                log.warning("batched reads unavailable on this Redis; one message per read", exc_info=True)
                channel.handlers["BRPOP"] = channel._brpop_read
                qos.append = kombu_append
            channel.connection._deliver(_envelope(first), queue)
            return True
        payloads = []
        for raw, wrote in zip(reply[::2], reply[1::2]):
            payload = _envelope(raw)
            if wrote:
                recorded.add(payload["properties"]["delivery_tag"])
            payloads.append(payload)
        delivered = 0
        begin()
        try:
            for payload in payloads:
                channel.connection._deliver(payload, queue)
                delivered += 1
        finally:
            # A delivery that raised leaves the rest recorded and unacked: the broker hands
            # them back after the visibility timeout, through kombu's own path.
            for payload in payloads[delivered:]:
                recorded.discard(payload.get("properties", {}).get("delivery_tag"))
            end()
        return True

    channel.handlers["BRPOP"] = read
