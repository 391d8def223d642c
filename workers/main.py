"""Starting a worker process: preload engines, then hand over to Celery."""

from __future__ import annotations

import gc
import logging
import socket
import sys
from pathlib import Path

from app import create_app
from app.config import Settings
from app.webhooks.dispatch import webhook_queue
from workers.shutdown import grace_left, install_webhook_drain

GIL_SWITCH_S = 0.001  # see run_worker

log = logging.getLogger(__name__)


def run_worker(settings: Settings, beat: bool = False, preload: bool = True, name_suffix: str | None = None,
               webhooks: bool = True, maintenance: bool = True) -> None:
    if not settings.models:
        raise SystemExit("no model to serve: pass --model NAME=SOURCE or set POOLQ_MODELS")
    flask_app = create_app(settings)
    celery = flask_app.extensions["celery"]
    import workers.tasks  # noqa: F401  (registers the tasks with this app)
    from workers import task_logs
    from workers.engines import engine_registry

    task_logs.install()
    shutdown_notes_through_logging()

    if settings.worker_metrics_port:
        from workers.metrics import serve_worker_metrics

        serve_worker_metrics(settings.worker_metrics_port, engine_registry(settings))
    if preload:
        # Load weights before consuming, so the first job does not pay for it
        # and a broken model fails the worker at start, not job by job.
        engine_registry(settings).preload()
    # Everything alive now (torch, transformers, the models' modules: hundreds
    # of thousands of objects) lives as long as the process. Frozen, the
    # collector stops re-scanning it: a bulk job's outputs otherwise trigger
    # full collections that walk it all, ~0.2 s each.
    gc.freeze()
    # The scheduler's stages are threads that mostly wait on Postgres, Redis or the
    # device while another runs Python (the Celery consumer, a forward's glue,
    # shaping). A thread whose answer has arrived waits for the GIL until the holder
    # lets go, by default after up to 5 ms, and each small job takes several such
    # round trips. 1 ms hands it back sooner: small-job flood +8% (4 of 4 A/B runs,
    # docs/benchmarks.md).
    sys.setswitchinterval(GIL_SWITCH_S)
    scheduler = start_scheduler(flask_app.extensions["poolq"], celery, engine_registry(settings))
    queues = [settings.queue_for(spec.name) for spec in settings.models]
    if maintenance:
        queues.append(settings.maintenance_queue)
    queues += [settings.bulk_queue_for(spec.name) for spec in settings.models]
    if webhooks:
        queues.append(webhook_queue(settings))
        install_webhook_drain(celery, settings.shutdown_grace_s)
    name = f"poolq-{name_suffix or 'worker'}@{socket.gethostname()}"
    # The pool threads run only the light tasks (validation, finalization,
    # sweeps, webhooks); jobs and chunks go to the scheduler without a thread,
    # so the prefetch, not the threads, bounds the work a worker holds.
    celery.conf.worker_prefetch_multiplier = max(1, settings.max_jobs_in_flight // settings.worker_threads)
    argv = [
        "--quiet",  # no banner: the lines above and below say what it has and does
        "worker",
        "--pool=threads",
        f"--concurrency={settings.worker_threads}",
        f"--queues={','.join(queues)}",
        f"--hostname={name}",
        "--without-mingle",
        "--without-gossip",
        "--loglevel=INFO",
    ]
    if beat:
        argv += ["--beat", f"--schedule={settings.home / 'celerybeat-schedule'}"]
    announce_loaded_models(settings, name, engine_registry(settings))
    log.info("worker %s consuming %s", name, ", ".join(queues))
    try:
        celery.worker_main(argv)
    finally:
        scheduler.stop(0)


def shutdown_notes_through_logging() -> None:
    """Celery writes "worker: Warm shutdown (MainProcess)" straight to stdout, past logging: one
    line that is not JSON under POOLQ_LOG_FORMAT=json. Its own helper, pointed at logging."""
    import celery.apps.worker as celery_worker

    celery_worker.safe_say = lambda msg, f=None: logging.getLogger("celery.apps.worker").info("%s", msg)


def announce_loaded_models(settings: Settings, name: str, engines) -> None:
    """Tell the API (/ready) which models this worker serves loaded, once it consumes: a job
    sent after /ready said so waits for no model load. Without preload, only those loaded."""
    from celery.signals import worker_ready, worker_shutting_down

    from app.system.loaded_models import Announcer

    announcer: list[Announcer] = []

    @worker_ready.connect(weak=False)
    def _announce(**_kwargs):
        announcer.append(Announcer(settings.broker_url, settings.namespace, name, lambda: sorted(engines.loaded())))
        announcer[0].start()
        log.info("worker %s ready: %s loaded", name, ", ".join(sorted(engines.loaded())) or "no model")

    @worker_shutting_down.connect(weak=False)
    def _withdraw(**_kwargs):
        for a in announcer:
            a.stop()


def start_scheduler(poolq, celery, engines):
    """The scheduler of this worker process, fed by the run_job / run_batch_chunk strategies;
    on shutdown (SIGTERM) it finishes what it can within POOLQ_SHUTDOWN_GRACE_S and gives the rest back."""
    from celery import bootsteps

    from workers.scheduler import handoff
    from workers.scheduler.runtime import Scheduler, worker_identity

    s = poolq.settings
    # As many preparation threads as the engines tokenize with (at most 2): on a CPU, one core
    # stays the forward's (models.engine.tokenizing_threads).
    loaded = engines.loaded().values()
    prepare_threads = min([2] + [engine.tokenizing_threads for engine in loaded])
    scheduler = Scheduler(poolq, engines, worker_identity(), lease_s=s.lease_s, max_attempts=s.max_attempts,
                          prepare_threads=prepare_threads)
    scheduler.start()
    handoff.install(scheduler)

    class DrainOnShutdown(bootsteps.StartStopStep):
        """Runs when the consumer shuts down for good (not on a broker reconnect, which only
        restarts it): the consumer has stopped taking messages, the connection is still open
        for the acks."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def shutdown(self, parent):
            scheduler.stop(grace_left(s.shutdown_grace_s))  # shared with the webhook drain

    celery.steps["consumer"].add(DrainOnShutdown)
    return scheduler


def shared_helper_budget(models: int, gpus_root: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """Tokenizer helpers per engine for a worker pinned to one of the host's GPUs.

    Production runs one worker per GPU (`--gpu N`), each with an engine per
    served model, and each engine would otherwise start a full helper budget
    of its own: eight workers on a 64-core host, 96 helpers. So the host's
    budget is divided by its GPUs (what the NVIDIA driver lists; 1 where it
    cannot be read) and by the models.
    """
    from models.tokenize_pool import helper_budget  # torch-free

    try:
        gpus = sum(1 for _ in gpus_root.iterdir())
    except OSError:
        gpus = 1
    budget = helper_budget()
    return max(1, budget // (max(1, gpus) * max(1, models))) if budget else 0


def run_cpu_worker(settings: Settings, role: str, threads: int) -> None:
    """A worker with no model and no torch, for one role:

    - `webhooks`: signed deliveries (slow receivers never hold a GPU worker's threads);
    - `maintenance`: batch validation and finalization, the sweeps. Parsing a batch's input and
      building its files is pure Python: in a GPU worker it holds the GIL that the device thread
      needs between forwards (a busy Python thread made the engine's 5,000-text call 4x slower on
      two cores), and a batch's validation now runs while its first chunks do.
    """
    flask_app = create_app(settings)
    celery = flask_app.extensions["celery"]
    import workers.tasks  # noqa: F401
    from workers import task_logs

    task_logs.install()
    shutdown_notes_through_logging()
    if role == "webhooks":
        install_webhook_drain(celery, settings.shutdown_grace_s)
        queue = webhook_queue(settings)
    else:
        queue = settings.maintenance_queue
    name = f"poolq-{role}@{socket.gethostname()}"
    celery.worker_main(["--quiet", "worker", "--pool=threads", f"--concurrency={threads}", f"--queues={queue}",
                        f"--hostname={name}", "--without-mingle", "--without-gossip", "--loglevel=INFO"])


def run_beat(settings: Settings) -> None:
    """Celery beat: the sweepers and schedules (exactly one per deployment)."""
    from workers.beat_service import run_beat as run_graceful_beat  # SIGTERM: see that module

    run_graceful_beat(settings)
