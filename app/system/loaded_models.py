"""Which served models a worker has loaded, read without torch: a note in Redis.

Each worker adds itself, once its engines are loaded and it consumes, to a
sorted set per model with an expiry as the score, and renews it every
RENEW_S; the API's /ready counts members not yet expired. A worker that dies
drops out within TTL_S; one that shuts down removes itself at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.broker import is_redis, redis_client_url

log = logging.getLogger(__name__)

TTL_S = 10.0
RENEW_S = 3.0


def _key(namespace: str, model: str) -> str:
    return f"{namespace}poolq:loaded:{model}"


def _client(broker_url: str):
    from app.jobs.events import redis_client  # bounded timeouts, one retry on a fresh connection

    return redis_client(redis_client_url(broker_url))


class Announcer:
    """The worker's side: a daemon thread that renews `worker`'s entries for the models
    `loaded()` names at each renewal (a model loaded lazily joins at the next one)."""

    def __init__(self, broker_url: str, namespace: str, worker: str, loaded: Callable[[], list[str]]):
        self._client = _client(broker_url) if is_redis(broker_url) else None
        self._namespace = namespace
        self._loaded = loaded
        self._worker = worker
        self._stopped = threading.Event()

    @property
    def _keys(self) -> list[str]:
        return [_key(self._namespace, m) for m in self._loaded()]

    def start(self) -> None:
        if self._client is not None:
            threading.Thread(target=self._run, name="poolq-loaded-models", daemon=True).start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                pipe = self._client.pipeline(transaction=False)
                for key in self._keys:
                    pipe.zadd(key, {self._worker: time.time() + TTL_S})
                    pipe.expire(key, int(TTL_S * 6))  # a model no worker serves any more leaves nothing behind
                pipe.execute()
            except Exception:  # noqa: BLE001 - Redis away: /ready says not ready until it is back
                log.debug("could not announce loaded models", exc_info=True)
            self._stopped.wait(RENEW_S)

    def stop(self) -> None:
        self._stopped.set()
        if self._client is None:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in self._keys:
                pipe.zrem(key, self._worker)
            pipe.execute()
        except Exception:  # noqa: BLE001 - the entries lapse by themselves
            pass


class LoadedModels:
    """The API's side: which of `models` no live worker has loaded."""

    def __init__(self, broker_url: str, namespace: str):
        self._client = _client(broker_url) if is_redis(broker_url) else None
        self._namespace = namespace

    def missing(self, models: list[str]) -> list[str] | None:
        """None where it cannot be told (a broker that is not Redis)."""
        if self._client is None:
            return None
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        for model in models:
            pipe.zcount(_key(self._namespace, model), now, "+inf")
        return [m for m, n in zip(models, pipe.execute()) if not n]
