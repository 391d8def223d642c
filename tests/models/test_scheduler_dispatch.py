"""The worker's dispatcher over a real engine: how far streamed work is tokenized ahead of the device.

A big job's or a batch chunk's further units are made a preparation turn at a time; the
dispatcher says when a flow already has enough waiting for the engine that its next unit
should wait (park_if_ahead), and hands it back (on_room) once the flow runs low.
"""
from __future__ import annotations

import queue
import time

import pytest

from workers.scheduler.dispatch import Dispatcher
from workers.scheduler.held import Held
from workers.scheduler.work import Plan

TEXTS = [f"text number {i} " + "word " * (i % 40) for i in range(8000)]


def streamed(engine, key: str) -> Held:
    held = Held("job", key, "bert", "tenant", False, 1, payload=None, sealed=False, streaming=True)
    held.prepared = Plan([engine.prepare_classify(TEXTS)], finish=lambda outputs: outputs)
    return held


def dispatcher(engine, on_room, on_complete) -> Dispatcher:
    tokens = engine.max_batch_tokens
    # One batch's tokens in flight: a flow's next unit waits while a batch's worth or more of it
    # waits here.
    return Dispatcher("bert", engine, on_complete, on_room, slice_tokens=max(1, tokens // 4),
                      inflight_tokens=tokens, max_slice_seqs=engine.max_batch_seqs)


def parked_once_counted(d: Dispatcher, held: Held, seconds: float = 10) -> bool:
    """park_if_ahead, retried until the dispatcher's thread has taken the work in."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if d.park_if_ahead(held):
            return True
        time.sleep(0.001)
    return False


@pytest.fixture
def running(bert):
    """A dispatcher over the engine, with what it hands back to `on_room` and `on_complete`."""
    rooms, completed = queue.Queue(), queue.Queue()
    d = dispatcher(bert, rooms.put, completed.put)
    yield d, rooms, completed
    d.stop()


def test_streamed_work_waits_while_its_flow_has_enough_ready_and_comes_back_when_it_runs_low(bert, running):
    d, rooms, completed = running
    held = streamed(bert, "big")
    d.add(held)
    assert parked_once_counted(d, held)  # 8,000 texts waiting against one batch's worth
    assert rooms.get(timeout=60) is held  # handed back as the engine worked through them
    assert not d.park_if_ahead(held)  # its flow is low now: its next unit goes at once
    d.seal(held)
    assert completed.get(timeout=60) is held and held.remaining == 0 and held.error is None


def test_a_dropped_flow_hands_its_parked_work_back(bert, running):
    d, rooms, _ = running
    held = streamed(bert, "cancelled")
    d.add(held)
    assert parked_once_counted(d, held)
    d.drop(held)  # cancelled: its preparation must get its turn back, to see that and stop
    assert rooms.get(timeout=60) is held
    time.sleep(0.2)  # what was in the engine comes back; what was dropped never runs
    assert held.remaining > 0  # so it was the drop, not the engine running it all, that handed it back
