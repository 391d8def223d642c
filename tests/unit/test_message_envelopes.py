"""The consumer reads a message's envelope as kombu does, faster where it can (redis_channel._envelope)."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from app.task_messages import TaskPublisher
from workers.scheduler.redis_channel import _envelope

RUN_JOB = TaskPublisher(None).message("poolq.run_job", "poolq.tiny", [str(uuid.uuid4())], {"model": "tiny"})


@pytest.mark.parametrize("raw", [
    RUN_JOB,
    RUN_JOB.decode(),  # a client that answers text
    # kombu's own markers (a datetime, a UUID) go through kombu's hook, which turns them back into objects
    kombu_dumps({"headers": {"eta": dt.datetime(2026, 12, 8, 1, 2, 3)}, "id": uuid.UUID(int=7)}).encode(),
    b'{"priority": NaN, "big": 123456789012345678901234567890}',  # what orjson refuses and json takes
    b'{"body": "e30=", "headers": {"text": "\\u00e9\\ud83d\\ude00"}, "list": [1, 2.5, null, true]}',
])
def test_an_envelope_reads_as_kombu_reads_it(raw):
    expected = kombu_loads(raw.decode() if isinstance(raw, bytes) else raw)
    # repr: the same keys in the same order, the same values of the same types (and NaN is no NaN's equal)
    assert repr(_envelope(raw)) == repr(expected)


def test_a_marker_comes_back_as_its_object():
    raw = kombu_dumps({"eta": dt.datetime(2026, 12, 8, 1, 2, 3)}).encode()
    assert _envelope(raw)["eta"] == dt.datetime(2026, 12, 8, 1, 2, 3)
