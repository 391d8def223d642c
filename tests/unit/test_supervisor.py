"""poolq up's supervisor: a child that dies is restarted; one that keeps dying at once cannot start."""

from __future__ import annotations

import os
import time

import pytest

from app.embedded import supervisor
from app.embedded.supervisor import CannotStart, Child


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(supervisor, "BACKOFF_S", (0.0,) * len(supervisor.BACKOFF_S))


def run_until(child: Child, done, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        child.check()
        time.sleep(0.02)


def test_a_child_that_keeps_dying_at_once_cannot_start_and_says_its_last_lines():
    child = Child("crasher", ["sh", "-c", "echo 'no such model: x'; exit 3"], dict(os.environ), echo=False)
    child.start()
    with pytest.raises(CannotStart) as failed:
        run_until(child, lambda: False)
    assert child.restarts == supervisor.MAX_QUICK_DEATHS
    assert "the crasher exited with status 3" in str(failed.value) and "no such model: x" in str(failed.value)


def test_a_killed_child_is_started_again():
    child = Child("sleeper", ["sh", "-c", "sleep 30"], dict(os.environ), echo=False)
    child.start()
    first = child.pid
    os.kill(first, 9)
    run_until(child, lambda: child.pid != first and child.exited() is None)
    assert child.pid != first and child.exited() is None and child.restarts == 1
    child.stop(5)
    assert child.exited() is not None
