"""One pooling engine per served model, loaded once per worker process.

Engines are built lazily (first job or preload at start) under a lock, since
Celery's thread pool may ask for the same model from many threads at once.
"""

from __future__ import annotations

import logging
import threading

from app.config import ModelSpec, Settings

log = logging.getLogger(__name__)


class EngineRegistry:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._engines: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, name: str):
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        with self._lock:
            if name not in self._engines:
                spec = self._settings.model(name)
                if spec is None:
                    raise LookupError(f"model {name!r} is not served by this worker")
                self._engines[name] = self._load(spec)
            return self._engines[name]

    def loaded(self) -> dict[str, object]:
        with self._lock:
            return dict(self._engines)

    def preload(self) -> None:
        for spec in self._settings.models:
            engine = self.get(spec.name)
            # One short forward pays the first call's one-time costs (kernel selection, allocator
            # growth, the tokenizer's first use) here, so the first job after /ready says ready is
            # as fast as the second.
            engine.encode(["poolq warm-up"], pooling_task=engine.supported_tasks[0])

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()

    def _load(self, spec: ModelSpec):
        from models import PoolingEngine  # torch is imported here, in workers only
        from models.engine import default_tokenizer_processes
        from models.loader import resolve_device

        s = self._settings
        processes = s.tokenizer_processes
        if processes is None:
            processes = default_tokenizer_processes(resolve_device(s.device), serving=True)
        log.info("loading model %s from %s (revision=%s, dtype=%s)", spec.name, spec.source, spec.revision, spec.dtype)
        return PoolingEngine(
            model=spec.source,
            revision=spec.revision,
            dtype=spec.dtype,
            device=s.device,
            task=spec.task,
            max_batch_tokens=s.max_batch_tokens,
            max_batch_seqs=s.max_batch_seqs,
            max_wait_ms=s.max_wait_ms,
            tokenizer_processes=processes,
            allow_pickle=s.allow_pickle_weights,
            trust_remote_code=s.trust_remote_code,
        )


_registry: EngineRegistry | None = None
_registry_lock = threading.Lock()


def engine_registry(settings: Settings) -> EngineRegistry:
    """The process-wide registry (one per worker process, shared by its threads)."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = EngineRegistry(settings)
        return _registry
