"""Admission control: past a backlog of queued jobs per model, answer 503.

vLLM rejects with 503 past `--max-num-queued-reqs`; poolq does the same per
model so a flood on one model cannot bury the others. The count is cached
for a moment per process: exactness does not matter, a cheap check does.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import service_unavailable
from app.jobs.records import Job


class Admission:
    def __init__(self, max_queued_jobs: int, ttl_s: float = 1.0):
        self._limit = max_queued_jobs
        self._ttl = ttl_s
        self._counts: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def check(self, session: Session, model: str) -> None:
        if self._limit <= 0:
            return
        now = time.monotonic()
        with self._lock:
            cached = self._counts.get(model)
        if cached is None or now - cached[0] > self._ttl:
            count = session.scalar(
                select(func.count()).select_from(Job).where(Job.status == "queued", Job.model == model))
            cached = (now, int(count or 0))
            with self._lock:
                self._counts[model] = cached
        if cached[1] >= self._limit:
            raise service_unavailable(
                f"Model `{model}` has {cached[1]} queued jobs (limit {self._limit}); retry later.")
