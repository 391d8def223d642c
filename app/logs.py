"""Logging for every poolq process: plain text by default, JSON lines with POOLQ_LOG_FORMAT=json.

Ids travel in a contextvar, so a line logged anywhere under `log_context(job_id=...)`
carries them without passing them down: the API binds request_id and tenant
per request, the worker binds the ids of the task it runs (task signals), and
any other code can bind what it knows. Library chatter stays out of INFO:
their warnings and errors still show, their progress lines only at DEBUG.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

CONTEXT_FIELDS = ("request_id", "tenant", "job_id", "batch_id", "model", "delivery_id", "task_id")
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("poolq_log_context", default={})

# At INFO these say what they do, not what went wrong (alembic's plugin and context lines,
# beat's "Sending due task" every few seconds, a line per light task, gunicorn's boot).
QUIET_AT_INFO = ("alembic", "celery", "kombu", "gunicorn.error", "amqp", "urllib3", "httpx", "filelock")
# Except their start and connection lines: the worker's "Connected to ...", "<name> ready.",
# beat's "beat: Starting..." (once per start); beat's line per sent task is dropped (BeatTicks).
KEEP_AT_INFO = ("celery.worker.consumer", "celery.apps.worker", "celery.beat")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind(**ids) -> contextvars.Token:
    """Add ids to this context (thread or task); `unbind(token)` restores what was there."""
    merged = {**_context.get(), **{k: str(v) for k, v in ids.items() if v is not None}}
    return _context.set(merged)


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


@contextmanager
def log_context(**ids) -> Iterator[None]:
    token = bind(**ids)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class BeatTicks(logging.Filter):
    """Beat's "Scheduler: Sending due task ..." every few seconds, kept for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not str(record.msg).startswith("Scheduler: Sending due task")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    level_no = logging.getLevelName(level.upper())
    if not isinstance(level_no, int):
        raise ValueError(f"log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_no)
    quiet = logging.WARNING if level_no >= logging.INFO else level_no
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(max(quiet, level_no))
    for name in KEEP_AT_INFO:
        logging.getLogger(name).setLevel(level_no)
    beat = logging.getLogger("celery.beat")
    beat.filters = [f for f in beat.filters if not isinstance(f, BeatTicks)]
    if level_no >= logging.INFO:
        beat.addFilter(BeatTicks())
    if level_no >= logging.INFO:
        # Before transformers is imported (it reads this once): no "Loading weights" bars.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.captureWarnings(True)  # warnings go through the handler too: one JSON line each
    # Celery says "you run as root" on every start; the embedded mode and containers often do.
    warnings.filterwarnings("ignore", message=".*superuser privileges.*")
    _keep_celery_off_logging()


def _keep_celery_off_logging() -> None:
    # A receiver on setup_logging tells Celery (worker and beat) to leave logging as configured
    # here instead of installing its own handlers and levels.
    try:
        from celery.signals import setup_logging
    except ImportError:
        return
    setup_logging.connect(_leave_logging_alone, weak=False)


def _leave_logging_alone(**_kwargs) -> None:
    return None


ROUTE_IDS = ("job_id", "batch_id", "delivery_id")
LOCATION_IDS = (("/v1/jobs/", "job_id"), ("/v1/batches/", "batch_id"))


def init_request_log_context(app, access_log: bool = False) -> None:
    """Every line logged while the API handles a request carries its request id, tenant and the
    ids in its route; with `access_log`, one line per request (`poolq.access`) carries them too,
    with the id of a job or batch the request made. Registered after the auth hook (the tenant)."""
    import uuid

    from flask import g, request

    access = logging.getLogger("poolq.access")

    @app.before_request
    def _bind_request_ids():
        tenant = getattr(g, "tenant_id", None)
        routed = {k: v for k, v in (request.view_args or {}).items() if k in ROUTE_IDS}
        g.poolq_log_token = bind(request_id=request.headers.get("X-Request-Id") or uuid.uuid4().hex,
                                 tenant=str(tenant) if tenant else None, **routed)
        g.poolq_started = time.perf_counter()

    @app.after_request
    def _access_line(response):
        if access_log:
            made = {}
            location = response.headers.get("Location", "")
            for prefix, key in LOCATION_IDS:
                if location.startswith(prefix):
                    made[key] = location[len(prefix):].split("/")[0]
            took_ms = (time.perf_counter() - g.get("poolq_started", time.perf_counter())) * 1000
            with log_context(**made):
                access.info("%s %s %d %.1f ms", request.method, request.path, response.status_code, took_ms)
        return response

    @app.teardown_request
    def _unbind_request_ids(_exc):
        token = g.pop("poolq_log_token", None)
        if token is not None:
            try:
                unbind(token)
            except ValueError:  # torn down in another context than it was bound in
                pass
