"""Admission's cached counts: when one is due, one request reads it again while the others go on
with the count it replaces (a herd of request threads each ran the count)."""

from __future__ import annotations

import threading

from app.jobs.admission import Admission


def test_a_due_count_is_read_once_while_the_others_use_the_last(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("app.jobs.admission.time.monotonic", lambda: clock[0])
    admission = Admission(max_queued_jobs=10, ttl_s=1.0)
    assert admission._cached(("model", "m"), lambda: 5) == 5
    clock[0] += 0.5
    assert admission._cached(("model", "m"), lambda: 6) == 5  # fresh: not read again
    clock[0] += 1.0  # due
    reading, release, reads, results = threading.Event(), threading.Event(), [], []

    def slow_count():
        reads.append("first")
        reading.set()
        assert release.wait(10)
        return 7

    first = threading.Thread(target=lambda: results.append(admission._cached(("model", "m"), slow_count)))
    first.start()
    assert reading.wait(10)
    # Meanwhile the others go on with the last count instead of reading it too.
    assert [admission._cached(("model", "m"), lambda: reads.append("again") or 9) for _ in range(3)] == [5, 5, 5]
    release.set()
    first.join(10)
    assert results == [7] and reads == ["first"]
    assert admission._cached(("model", "m"), lambda: 9) == 7  # the new count, fresh


def test_a_failed_read_lets_the_next_request_read_it(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("app.jobs.admission.time.monotonic", lambda: clock[0])
    admission = Admission(max_queued_jobs=10, ttl_s=1.0)
    assert admission._cached(("tenant", 1), lambda: 3) == 3
    clock[0] += 2

    def broken():
        raise ConnectionError("database gone")

    try:
        admission._cached(("tenant", 1), broken)
    except ConnectionError:
        pass
    else:
        raise AssertionError("the read's error must reach its request")
    assert admission._cached(("tenant", 1), lambda: 4) == 4  # not left marked as being read
