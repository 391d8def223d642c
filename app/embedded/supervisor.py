"""Child processes that are restarted when they die.

`poolq up`'s children (Redis, the worker, beat, the API) each run as a
`Child`. A child that dies is started again after a backoff, with a line
saying how it died; its work is not lost (the worker's leases lapse and its
successor takes them over; the broker keeps unacked messages). A child that
keeps dying before it has stayed up `STABLE_S` cannot start, and that ends
`poolq up`, with the child's last lines.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("poolq.embedded")

STABLE_S = 30.0  # up this long: the next death is a new incident, backoff starts over
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)
MAX_QUICK_DEATHS = len(BACKOFF_S)  # this many deaths in a row, each before STABLE_S: cannot start
LAST_LINES = 30
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a `poolq up` killed with -9 takes its
    # children with it instead of leaving them on a home nobody holds any more.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class CannotStart(RuntimeError):
    pass


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], echo: bool = True,
                 after_ready: bool = False):
        """`echo`: pass its lines on to our stdout (off: kept only for the message if it cannot start).
        `after_ready`: started once the others serve, not with them."""
        self.name, self.argv, self.env, self.echo, self.after_ready = name, argv, env, echo, after_ready
        self.proc: subprocess.Popen | None = None
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self.restarts = 0
        self._started_at = 0.0
        self._quick_deaths = 0
        self._restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        # A process group of its own: a Ctrl-C in the terminal reaches `poolq up` alone, which
        # then stops the children in order (Redis last: the worker acks what it finishes).
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, process_group=0)
        self._started_at = time.monotonic()
        self._restart_at = None
        threading.Thread(target=self._relay, args=(self.proc,), name=f"poolq-{self.name}-output", daemon=True).start()
        log.info("started the %s (pid %d)", self.name, self.proc.pid)

    def _relay(self, proc: subprocess.Popen) -> None:
        # The child's lines go on to our stdout unchanged (JSON logs stay one object per line),
        # and the last few are kept for the message if it cannot start.
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            self.last_lines.append(line.rstrip("\n"))
            if self.echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def last_output(self) -> str:
        if self.proc is not None and self.proc.stdout is not None:
            time.sleep(0.2)  # let the relay thread read what the child wrote as it died
        lines = "\n".join(f"  | {line}" for line in self.last_lines)
        return lines or "  (it printed nothing)"

    def check(self) -> None:
        """Restart a dead child when its backoff is over; raise CannotStart if it keeps dying at once."""
        code = self.exited()
        if code is None:
            return
        now = time.monotonic()
        if self._restart_at is None:
            lived = now - self._started_at
            self._quick_deaths = self._quick_deaths + 1 if lived < STABLE_S else 1
            if self._quick_deaths > MAX_QUICK_DEATHS:
                raise CannotStart(f"the {self.name} {describe_exit(code)} {self._quick_deaths} times in a row, "
                                  f"each within {STABLE_S:.0f} s of its start; its last lines:\n{self.last_output()}")
            delay = BACKOFF_S[self._quick_deaths - 1]
            log.warning("the %s (pid %d) %s after %.0f s; restarting it in %.0f s",
                        self.name, self.proc.pid, describe_exit(code), lived, delay)
            self._restart_at = now + delay
        if now >= self._restart_at:
            self.restarts += 1
            self.start()

    def stop(self, timeout_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the %s did not stop within %.0f s; killing it", self.name, timeout_s)
            self.proc.kill()
            self.proc.wait()
