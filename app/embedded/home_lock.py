"""One poolq per POOLQ_HOME: an flock on a file in the home.

Two instances on one home share a SQLite file and a broker, and each takes
the other's work (deliveries it refuses, batches of models it does not
serve). The kernel drops an flock when its holder dies, however it dies, so
a crashed instance never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "poolq.lock"
# Set by `poolq up` for its children: they run on the home their parent holds.
SUPERVISOR_ENV = "POOLQ_SUPERVISOR_PID"


class HomeInUse(RuntimeError):
    def __init__(self, home: Path, holder: str, command: str):
        self.home, self.holder = home, holder
        super().__init__(
            f"POOLQ_HOME {home} is in use by another poolq (PID {holder}). Stop that one, or run this one "
            f"on a home of its own: POOLQ_HOME=/some/other/dir poolq {command}")


class HomeLock:
    """Held from `acquire` until the process exits (or `release`)."""

    def __init__(self, home: Path, command: str = "up"):
        self.path = home / LOCK_NAME
        self._command = command
        self._fd: int | None = None

    def acquire(self) -> HomeLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HomeInUse(self.path.parent, holder, self._command) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def supervised_by_parent() -> bool:
    """This process is a child of the `poolq up` that holds the home."""
    return os.environ.get(SUPERVISOR_ENV) == str(os.getppid())
