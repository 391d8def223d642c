"""poolq's settings: one typed object, built from the environment in one place.

Nothing reads `os.environ` at import time; `Settings.from_env()` is called by
the entry points (CLI, wsgi, Celery app) and the object is injected from there.
The defaults give the embedded mode: a SQLite file under POOLQ_HOME and a
Redis that `poolq up` starts on a unix socket there, so `poolq up` needs no
external service and runs the production broker code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from app.webhooks.settings import WebhookSettings

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_OPTIONS = ("revision", "dtype", "task")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class SettingsError(ValueError):
    """A setting has a value poolq cannot use."""


@dataclass(frozen=True)
class ModelSpec:
    """One served model: `NAME=SOURCE[?revision=R&dtype=D&task=T]`."""

    name: str
    source: str
    revision: str | None = None
    dtype: str = "auto"
    task: str | None = None

    @classmethod
    def parse(cls, item: str) -> ModelSpec:
        name, sep, rest = item.strip().partition("=")
        if not sep or not rest:
            raise SettingsError(f"model {item!r}: expected NAME=SOURCE (a local directory or a hub id)")
        if not MODEL_NAME_RE.match(name):
            raise SettingsError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        source, _, query = rest.partition("?")
        options = dict(parse_qsl(query, keep_blank_values=False, strict_parsing=bool(query)))
        unknown = set(options) - set(MODEL_OPTIONS)
        if unknown:
            raise SettingsError(f"model {name!r}: unknown option(s) {sorted(unknown)}; known: {MODEL_OPTIONS}")
        dtype = options.get("dtype", "auto")
        if dtype not in DTYPES:
            raise SettingsError(f"model {name!r}: dtype {dtype!r} is not one of {DTYPES}")
        return cls(name=name, source=source, revision=options.get("revision"), dtype=dtype, task=options.get("task"))

    def to_item(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in (("revision", self.revision), ("task", self.task)) if v)
        if self.dtype != "auto":
            query = f"{query}&dtype={self.dtype}" if query else f"dtype={self.dtype}"
        return f"{self.name}={self.source}" + (f"?{query}" if query else "")


def parse_models(items: list[str] | tuple[str, ...]) -> tuple[ModelSpec, ...]:
    specs = tuple(ModelSpec.parse(item) for item in items if item.strip())
    names = [s.name for s in specs]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise SettingsError(f"model name(s) given twice: {sorted(duplicated)}")
    return specs


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str
    models: tuple[ModelSpec, ...] = ()
    device: str | None = None
    max_batch_tokens: int | None = None
    max_batch_seqs: int | None = None
    max_wait_ms: float | None = None
    # Tokenizer helper processes per engine; None: the engine's default
    # (on a GPU, enough to feed it; on a CPU, none).
    tokenizer_processes: int | None = None
    worker_threads: int = 8
    host: str = "127.0.0.1"
    port: int = 8000
    allow_pickle_weights: bool = False
    trust_remote_code: bool = False
    # A queued job whose message may have been lost (the API died between
    # commit and send, or a worker between the broker's pop and its record of
    # the delivery) is sent again after this long, but only while its
    # model's queue is empty, so a message still waiting is never doubled.
    requeue_after_s: int = 30
    # Leases: a worker holds its running jobs and chunks for this long and
    # renews them every third of it; a lease that lapsed (its worker died) is
    # taken over by another worker at its next heartbeat.
    lease_s: float = 15.0
    # Claims of one job; a job whose worker died on every one fails (a poison job).
    max_attempts: int = 3
    # Messages (jobs and chunks) one worker process holds at once: the prefetch.
    max_jobs_in_flight: int = 2048
    # SIGTERM: work that finishes within this long is stored; the rest is given back.
    shutdown_grace_s: float = 30.0
    # Redis gives a message back this long after its delivery if it is still
    # unacked. Held work is protected by its lease; this bounds how long the
    # messages a dead worker received but never claimed wait.
    redeliver_after_s: int = 30
    # Fault tests only: the worker SIGKILLs itself at this step of the group
    # path (claimed | computed | committed), or stalls there 3 s (the step and
    # ":pause"); empty in any real deployment.
    failpoint: str = ""
    # Big enough for a 100k-text bulk job in one request.
    max_request_bytes: int = 256 * 1024 * 1024
    # Celery task events (what Flower shows) cost a few Redis publishes per
    # job; a deployment without Flower can turn them off for throughput.
    task_events: bool = True
    # The API's `task-sent` event: Flower's "pending" state for a job no worker
    # has received yet. It is a second Redis publish per submitted job (~14%
    # of the API's CPU on one-text jobs), and the backlog it shows is in
    # /metrics (poolq_jobs_backlog) anyway, so it is opt-in.
    task_sent_events: bool = False
    access_log: bool = False
    # A worker serves its Prometheus metrics here (0: off).
    worker_metrics_port: int = 0
    # How long a synchronous pooling request waits for its job before it
    # answers 202 with the job's location instead.
    sync_timeout_s: float = 30.0
    # Queued jobs per model past which submissions get 503 (0: no limit).
    max_queued_jobs: int = 0
    # Prefixes every queue and channel name, so several deployments (or test
    # runs) can share one Redis without taking each other's messages.
    namespace: str = ""
    # "required": every API call needs a key; "off": everyone is the default
    # tenant. Default: off for the embedded SQLite mode, required otherwise.
    auth: str = "required"
    # Queued jobs per tenant past which submissions get 429 (0: no limit);
    # a tenant's own max_queued_jobs overrides it.
    tenant_max_queued_jobs: int = 0
    # Finished jobs (and their results) are deleted this long after they
    # finish (0: kept forever).
    job_retention_s: int = 7 * 24 * 3600
    max_items_per_request: int = 100_000
    # Bulk batches: the largest uploaded file, lines per chunk (the unit a
    # worker claims and stores at once), and chunks of one batch in flight
    # (keeps bulk work from filling the workers' prefetch and threads).
    max_file_bytes: int = 200 * 1024 * 1024
    # Uploaded files expire this long after upload unless the upload says
    # otherwise (`expires_after`); 0: kept until deleted. 30 days, as OpenAI
    # does for batch files.
    file_expiry_s: int = 30 * 24 * 3600
    # Schedules one tenant may hold (0: no limit).
    max_schedules_per_tenant: int = 100
    # A batch's first chunk; later ones grow to four times this (app/batches/progress.chunk_size).
    batch_chunk_lines: int = 512
    # Four: the next chunks are claimed and tokenized while others run, so the device does
    # not wait between them (two left it idle between chunks: docs/benchmarks.md, run 8).
    # A chunk holds no thread, and the bulk lane runs behind interactive work whatever this is.
    batch_parallel_chunks: int = 4
    # Delivery retries, timeouts, the callback allowlist (POOLQ_WEBHOOK_*).
    webhooks: WebhookSettings = field(default_factory=lambda: _webhook_settings({}))
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded_broker(self) -> bool:
        """The broker is the Redis `poolq up` starts under POOLQ_HOME (none was configured)."""
        return self.broker_url == embedded_broker_url(self.home)

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"

    def with_models(self, specs: tuple[ModelSpec, ...]) -> Settings:
        return replace(self, models=specs)

    def queue_for(self, model: str) -> str:
        """The broker queue of a model's jobs: `pool.<model>`."""
        return f"{self.namespace}pool.{model}"

    def bulk_queue_for(self, model: str) -> str:
        """The broker queue of a model's batch chunks: `pool.<model>.bulk`."""
        return f"{self.queue_for(model)}.bulk"

    @property
    def maintenance_queue(self) -> str:
        return f"{self.namespace}poolq.maintenance"

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("POOLQ_HOME", "~/.poolq")).expanduser()
        settings = cls(
            home=home,
            database_url=_database_url(env.get("POOLQ_DATABASE_URL") or env.get("DATABASE_URL"), home),
            broker_url=env.get("POOLQ_BROKER_URL") or env.get("REDIS_URL") or embedded_broker_url(home),
            models=parse_models(env.get("POOLQ_MODELS", "").split(",")),
            device=env.get("POOLQ_DEVICE") or None,
            max_batch_tokens=_int(env, "POOLQ_MAX_BATCH_TOKENS"),
            max_batch_seqs=_int(env, "POOLQ_MAX_BATCH_SEQS"),
            max_wait_ms=_float(env, "POOLQ_MAX_WAIT_MS"),
            tokenizer_processes=_int(env, "POOLQ_TOKENIZER_PROCESSES"),
            worker_threads=_int(env, "POOLQ_WORKER_THREADS") or 8,
            host=env.get("POOLQ_HOST", "127.0.0.1"),
            port=_int(env, "POOLQ_PORT") or 8000,
            allow_pickle_weights=_bool(env, "POOLQ_ALLOW_PICKLE_WEIGHTS"),
            trust_remote_code=_bool(env, "POOLQ_TRUST_REMOTE_CODE"),
            requeue_after_s=_int(env, "POOLQ_REQUEUE_AFTER_S") or 30,
            lease_s=_float(env, "POOLQ_LEASE_S") or 15.0,
            max_attempts=_int(env, "POOLQ_MAX_ATTEMPTS") or 3,
            max_jobs_in_flight=_int(env, "POOLQ_MAX_JOBS_IN_FLIGHT") or 2048,
            shutdown_grace_s=_float(env, "POOLQ_SHUTDOWN_GRACE_S") if env.get("POOLQ_SHUTDOWN_GRACE_S") else 30.0,
            redeliver_after_s=_int(env, "POOLQ_REDELIVER_AFTER_S") or 30,
            failpoint=env.get("POOLQ_FAILPOINT", ""),
            max_request_bytes=_int(env, "POOLQ_MAX_REQUEST_BYTES") or 256 * 1024 * 1024,
            task_events=_bool(env, "POOLQ_TASK_EVENTS", default=True),
            task_sent_events=_bool(env, "POOLQ_TASK_SENT_EVENTS"),
            access_log=_bool(env, "POOLQ_ACCESS_LOG"),
            worker_metrics_port=_int(env, "POOLQ_WORKER_METRICS_PORT") or 0,
            sync_timeout_s=_float(env, "POOLQ_SYNC_TIMEOUT_S") or 30.0,
            max_queued_jobs=_int(env, "POOLQ_MAX_QUEUED_JOBS") or 0,
            namespace=env.get("POOLQ_NAMESPACE", ""),
            tenant_max_queued_jobs=_int(env, "POOLQ_TENANT_MAX_QUEUED_JOBS") or 0,
            job_retention_s=_int(env, "POOLQ_JOB_RETENTION_S") if env.get("POOLQ_JOB_RETENTION_S") else 7 * 24 * 3600,
            max_items_per_request=_int(env, "POOLQ_MAX_ITEMS_PER_REQUEST") or 100_000,
            max_file_bytes=_int(env, "POOLQ_MAX_FILE_BYTES") or 200 * 1024 * 1024,
            max_schedules_per_tenant=_int(env, "POOLQ_MAX_SCHEDULES_PER_TENANT")
            if env.get("POOLQ_MAX_SCHEDULES_PER_TENANT") else 100,
            file_expiry_s=_int(env, "POOLQ_FILE_EXPIRY_S") if env.get("POOLQ_FILE_EXPIRY_S") else 30 * 24 * 3600,
            batch_chunk_lines=_int(env, "POOLQ_BATCH_CHUNK_LINES") or 512,
            batch_parallel_chunks=_int(env, "POOLQ_BATCH_PARALLEL_CHUNKS") or 4,
            webhooks=_webhook_settings(env),
        )
        settings = replace(settings, auth=_auth_mode(env.get("POOLQ_AUTH"), settings.embedded_database))
        return replace(settings, **overrides) if overrides else settings


def _webhook_settings(env: Mapping[str, str]) -> WebhookSettings:
    # Imported here: app.webhooks.settings raises this module's SettingsError.
    from app.webhooks.settings import webhook_settings

    return webhook_settings(env)


def embedded_redis_socket(home: Path) -> Path:
    """Where the embedded Redis listens. A unix socket path must fit in 108 bytes; a deep
    POOLQ_HOME gets one under /tmp instead, named after the home so it stays one per home."""
    path = home.absolute() / "redis.sock"
    if len(str(path)) < 100:
        return path
    import hashlib

    return Path("/tmp") / f"poolq-{hashlib.sha256(str(home.absolute()).encode()).hexdigest()[:16]}.sock"


def embedded_broker_url(home: Path) -> str:
    # kombu's spelling of a Redis unix socket (redis-py's is unix://; app.broker converts).
    return f"redis+socket://{embedded_redis_socket(home)}"


def _database_url(url: str | None, home: Path) -> str:
    if not url:
        return f"sqlite:///{home / 'poolq.db'}"
    # Plain postgres URLs select psycopg2 in SQLAlchemy; poolq ships psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _auth_mode(raw: str | None, embedded: bool) -> str:
    if not raw:
        return "off" if embedded else "required"
    mode = raw.strip().lower()
    if mode not in ("required", "off"):
        raise SettingsError(f"POOLQ_AUTH={raw!r}: use 'required' or 'off'")
    return mode


def _int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], key: str) -> float | None:
    raw = env.get(key)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not a number") from None


def _bool(env: Mapping[str, str], key: str, default: bool = False) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")
