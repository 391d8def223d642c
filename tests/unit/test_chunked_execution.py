"""A job's chunks overlap in the engine, yet come back in order and stop on cancel."""
from __future__ import annotations

import threading
import time

import pytest

from workers import execution
from workers.execution import CHUNK, IN_FLIGHT, JobCancelled, _chunked


def test_outputs_keep_input_order_while_chunks_overlap():
    running, peak, lock = 0, 0, threading.Lock()

    def run(part):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02 if part[0] == 0 else 0.001)  # the first chunk is the slowest
        with lock:
            running -= 1
        return [x * 2 for x in part]

    items = list(range(CHUNK * 5 + 7))
    assert _chunked(run, items, lambda: False) == [x * 2 for x in items]
    assert 1 < peak <= IN_FLIGHT


def test_cancel_stops_before_the_next_chunk_starts():
    started = []

    def run(part):
        started.append(part[0])
        return part

    checks = iter([False, True])
    with pytest.raises(JobCancelled):
        _chunked(run, list(range(CHUNK * 10)), lambda: next(checks))
    # Chunk 0 ran; chunk 1 passed its check (it may be cancelled before it
    # starts); nothing after the refused check ever started.
    assert 0 in started and set(started) <= {0, CHUNK}


def test_an_error_in_a_chunk_is_raised_in_order():
    def run(part):
        if part[0] >= CHUNK:
            raise ValueError(f"bad chunk at {part[0]}")
        return part

    with pytest.raises(ValueError, match=f"bad chunk at {CHUNK}$"):
        _chunked(run, list(range(CHUNK * 4)), lambda: False)


def test_one_chunk_runs_on_the_callers_thread():
    caller = threading.get_ident()
    assert _chunked(lambda part: [threading.get_ident()] * len(part), [1, 2], lambda: False) == [caller, caller]
    assert execution.CHUNK >= 1024  # big enough to fill many micro-batches
