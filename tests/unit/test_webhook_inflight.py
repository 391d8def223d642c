"""app/webhooks/inflight.py: what a shutting-down webhook worker waits for, and what it hands back."""

from __future__ import annotations

import threading
import time
import uuid

from app.webhooks.delivery import ClaimedAttempt
from app.webhooks.inflight import InFlight


def claimed() -> ClaimedAttempt:
    key = uuid.uuid4()
    return ClaimedAttempt(key, f"msg_{key.hex}", "http://example.test/hook", "{}", 1, 1, ["secret"])


def test_an_attempt_that_finishes_within_the_grace_is_the_workers_to_record():
    inflight = InFlight()
    assert inflight.admit()
    attempt = inflight.started(claimed())
    done: list[bool] = []
    threading.Timer(0.1, lambda: done.append(inflight.finished(attempt))).start()
    assert inflight.stop(deadline=time.monotonic() + 5) == []
    assert done == [True]


def test_an_attempt_still_running_at_the_deadline_is_handed_back_and_not_recorded():
    inflight = InFlight()
    assert inflight.admit()
    attempt = inflight.started(claimed())
    assert inflight.stop(deadline=time.monotonic() + 0.1) == [attempt]
    assert not inflight.finished(attempt)  # the thread, once woken, records nothing


def test_no_claim_starts_once_stopping_and_a_claim_under_way_is_waited_for():
    inflight = InFlight()
    assert inflight.admit()  # a claim under way when the stop comes
    late = claimed()
    threading.Timer(0.2, lambda: inflight.started(late)).start()
    left = inflight.stop(deadline=time.monotonic())  # the grace is already spent
    assert [a.claimed for a in left] == [late]
    assert not inflight.admit()
