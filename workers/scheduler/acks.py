"""Acks for many broker messages at once: one Redis round trip for a group write's messages.

kombu acks a Redis message with a pipeline of its own (ZREM from the unacked
index, HDEL from the unacked hash), one round trip per message: after a
group write of a hundred jobs, a hundred round trips from the writer thread,
about as much CPU as the write itself. Both commands take many members, so
the messages of one channel are acked here with one pipeline of two
commands, and each message is then marked acked in kombu's own state exactly
as its `ack()` would have (the channel's QoS forgets the tag; the message's
state becomes ACK).

Anything but kombu's Redis transport (another broker, a test's stand-in) is
acked one by one, as before. A failure leaves the
messages unacked: the broker redelivers them and the claim finds their work
settled, so it acks them then (docs/design/worker.md).
"""
from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual

log = logging.getLogger(__name__)


def _redis_qos(message):
    """The message's channel QoS, where it is kombu's Redis one and the message is still unacked."""
    if getattr(message, "acknowledged", True):
        return None
    qos = getattr(getattr(message, "channel", None), "qos", None)
    return qos if isinstance(qos, kombu_redis.QoS) else None


def ack_all(messages) -> None:
    """Ack every message; a Redis channel's together in one round trip."""
    by_qos: dict[int, tuple] = {}
    one_by_one = []
    for message in messages:
        qos = _redis_qos(message)
        if qos is None:
            one_by_one.append(message)
        else:
            by_qos.setdefault(id(qos), (qos, []))[1].append(message)
    for qos, group in by_qos.values():
        if len(group) == 1:
            one_by_one.extend(group)
            continue
        tags = [m.delivery_tag for m in group]
        try:
            with qos.channel.conn_or_acquire() as client:
                client.pipeline().zrem(qos.unacked_index_key, *tags).hdel(qos.unacked_key, *tags).execute()
        except Exception:  # noqa: BLE001 - a broker reconnect dropped the channel: it redelivers, a no-op
            log.debug("acks failed", exc_info=True)
            continue
        for m in group:
            # What Message.ack() does after the round trip: the QoS forgets the tag (the
            # prefetch window frees a place) and the message counts as acked.
            kombu_virtual.QoS.ack(qos, m.delivery_tag)
            m._state = "ACK"
    for message in one_by_one:
        try:
            message.ack()
        except Exception:  # noqa: BLE001 - as above
            log.debug("ack failed", exc_info=True)
