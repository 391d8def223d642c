"""Redis and Postgres servers of a test's own, so faults can be injected without touching the machine's.

Never point these at the shared servers: they are stopped, paused (SIGSTOP)
and restarted. Postgres runs as the `postgres` user when the tests run as
root (initdb refuses root).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from werkzeug.serving import make_server

from tests_support import free_port

PG_BIN = Path(os.environ.get("POOLQ_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class PrivateRedis:
    """`persistent`: an append-only file, as a production broker keeps, so a restart loses no message."""

    def __init__(self, persistent: bool = False):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="poolq-redis-") if persistent else None

    def start(self) -> None:
        persistence = (["--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir] if self.dir
                       else ["--appendonly", "no"])
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", *persistence],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()  # a stopped process would not handle SIGTERM
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)


class PrivatePostgres:
    def __init__(self):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="poolq-pg-"))
        self.data = self.dir / "data"
        self.server = f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=60)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        # fsync off: the tests restart the server, they do not crash the machine.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off",
                  "start")
        wait_port(self.port)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the whole cluster (the postmaster and every backend): connections stay
        open, the kernel still acknowledges TCP, and nothing answers."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: int) -> None:
        for pid in self._processes():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                # Exited between the listing and the signal (a backend whose client left, once
                # the processes resumed before it ran on): gone, so nothing to stop or resume.
                pass

    def _processes(self) -> list[int]:
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[1]) == postmaster:  # the parent pid
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def remove(self) -> None:
        self.resume()  # a stopped cluster would not stop
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ServedApp:
    """A poolq API behind werkzeug's threaded HTTP server, in a thread of the test process."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        poolq = self.app.extensions["poolq"]
        poolq.db_engine.dispose()
        poolq.request_session_factory.kw["bind"].dispose()
        poolq.statement_engine.dispose()


class CommitCutter:
    """A TCP proxy in front of Postgres that, once armed, breaks the next COMMIT of a transaction
    that ran a statement containing `marker`, as a network fault would, then passes all through again:

    - "before": the client's connection is cut and the COMMIT never reaches the server (nothing kept);
    - "after": the COMMIT reaches the server, which commits; the client's connection is cut
      before the answer reaches it (kept, but the client cannot know).

    `autocommit=True` breaks the statement containing `marker` itself, for a write that is
    its own transaction (no COMMIT is sent).
    """

    def __init__(self, upstream_port: int = 5432):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode: str | None = None
        self.marker = b""
        self.autocommit = False
        self.fired = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode: str, marker: bytes, autocommit: bool = False) -> None:
        assert mode in ("before", "after")
        self.fired.clear()
        self.mode, self.marker, self.autocommit = mode, marker, autocommit

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            link = {"swallow": False, "marked": False}
            threading.Thread(target=self._to_server, args=(client, server, link), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, link), daemon=True).start()

    def _to_server(self, client, server, link) -> None:
        try:
            while data := client.recv(65536):
                if self.mode and self.marker in data:
                    link["marked"] = True
                commit = b"Q\x00\x00\x00\x0bCOMMIT\x00" in data or (self.autocommit and self.marker in data)
                if link["marked"] and self.mode and commit:
                    mode, self.mode = self.mode, None
                    if mode == "before":
                        self._cut(client, server)
                        self.fired.set()
                        return
                    link["swallow"] = True  # the answer to this COMMIT never reaches the client
                server.sendall(data)
        except OSError:
            pass
        self._cut(client, server)

    def _to_client(self, server, client, link) -> None:
        try:
            while data := server.recv(65536):
                if link["swallow"]:
                    self._cut(client, None)  # the server has answered the COMMIT: it committed
                    self.fired.set()
                    return
                client.sendall(data)
        except OSError:
            pass
        self._cut(client, server)

    @staticmethod
    def _cut(*socks) -> None:
        for sock in socks:
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
