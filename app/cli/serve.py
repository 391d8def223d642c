"""The server commands: `poolq up`, `api`, `worker`, `webhooks`, `maintenance`, `beat`, `flower`, `migrate`,
`demo-model`."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import click

from app.cli.options import MODEL_HELP, hold_home, settings_from_env


@click.command()
@click.option("--model", "models", multiple=True, help=MODEL_HELP)
@click.option("--host", default=None, help="Address the API binds (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port the API binds (default 8000).")
@click.option("--threads", type=int, default=None, help="Worker task threads (default POOLQ_WORKER_THREADS or 8).")
@click.option("--example/--no-example", default=False, help="Submit one example job once ready and print it.")
def up(models, host, port, threads, example) -> None:
    """Run Redis, a worker, beat and the API on this machine, supervised; no external service needed.

    One per POOLQ_HOME (default ~/.poolq): a second one on the same home is refused."""
    from app.embedded import run_embedded
    from app.embedded.home_lock import HomeInUse

    settings = settings_from_env(models, host=host, port=port, worker_threads=threads)
    try:
        sys.exit(run_embedded(settings, example=example))
    except HomeInUse as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--model", "models", multiple=True, help=MODEL_HELP)
@click.option("--host", default=None, help="Address to bind (default POOLQ_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default POOLQ_PORT or 8000).")
@click.option("--workers", type=int, default=2, show_default=True, help="gunicorn worker processes.")
@click.option("--threads", type=int, default=32, show_default=True, help="Threads per gunicorn worker.")
def api(models, host, port, workers, threads) -> None:
    """Serve the HTTP API with gunicorn (never imports torch)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before prometheus_client is imported: gunicorn's processes then share
        # their counters through files, and /metrics sums them.
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="poolq-metrics-")
    from app.server import serve

    settings = settings_from_env(models, host=host, port=port)
    serve(settings, workers=workers, threads=threads)


@click.command()
@click.option("--model", "models", multiple=True, help=MODEL_HELP)
@click.option("--gpu", type=int, default=None, help="Pin this process to one GPU (sets CUDA_VISIBLE_DEVICES).")
@click.option("--threads", type=int, default=None, help="Celery task threads (default POOLQ_WORKER_THREADS or 8).")
@click.option("--beat/--no-beat", default=False, help="Also run Celery beat (exactly one per deployment).")
@click.option("--preload/--no-preload", default=True, help="Load every model before taking jobs.")
@click.option("--webhooks/--no-webhooks", default=True,
              help="Also deliver webhooks (off where `poolq webhooks` workers run, so slow receivers never hold "
                   "GPU worker threads).")
@click.option("--maintenance/--no-maintenance", default=True,
              help="Also validate and finalize batches and run the sweeps (off where a `poolq maintenance` worker "
                   "runs, so parsing a batch's input never holds the GIL the device thread needs).")
def worker(models, gpu, threads, beat, preload, webhooks, maintenance) -> None:
    """Run a Celery worker that drains pool.<model> queues through the engine."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before torch is first imported
    settings = settings_from_env(models, worker_threads=threads)
    hold_home(settings, "worker")
    from workers.main import run_worker, shared_helper_budget

    if gpu is not None and settings.tokenizer_processes is None:
        settings = replace(settings, tokenizer_processes=shared_helper_budget(len(settings.models)))

    run_worker(settings, beat=beat, preload=preload, name_suffix=f"gpu{gpu}" if gpu is not None else None,
               webhooks=webhooks, maintenance=maintenance)


@click.command()
@click.option("--threads", type=int, default=16, show_default=True, help="Concurrent deliveries.")
def webhooks(threads) -> None:
    """Run a CPU worker that only delivers webhooks (queue `webhooks`)."""
    from workers.main import run_cpu_worker

    settings = settings_from_env()
    hold_home(settings, "webhooks")
    run_cpu_worker(settings, "webhooks", threads)


@click.command()
@click.option("--model", "models", multiple=True, help=MODEL_HELP)
@click.option("--threads", type=int, default=4, show_default=True, help="Concurrent maintenance tasks.")
def maintenance(models, threads) -> None:
    """Run a CPU worker for batch validation and finalization and the sweeps (the maintenance queue):
    no model loaded, no torch; it reads the served models' configs to validate batch lines."""
    from workers.main import run_cpu_worker

    settings = settings_from_env(models)
    hold_home(settings, "maintenance")
    run_cpu_worker(settings, "maintenance", threads)


@click.command()
def beat() -> None:
    """Run Celery beat: the job sweeper and other schedules (exactly one per deployment)."""
    from workers.main import run_beat

    settings = settings_from_env()
    hold_home(settings, "beat")
    run_beat(settings)


@click.command("demo-model")
@click.argument("target", type=click.Path(file_okay=False))
def demo_model(target) -> None:
    """Build the offline demo classifier into TARGET (no hub needed)."""
    from models.demo import DEMO_DESCRIPTION, materialize_demo_model

    path = materialize_demo_model(target)
    click.echo(f"{path}: {DEMO_DESCRIPTION}")


@click.command()
def migrate() -> None:
    """Bring the database schema to the latest revision."""
    from app.db.migrate import upgrade

    settings = settings_from_env()
    upgrade(settings.database_url)
    click.echo(f"database at head: {settings.database_url.split('@')[-1]}")


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", type=int, default=5555, show_default=True, help="Port Flower's UI listens on.")
@click.pass_context
def flower(ctx, port) -> None:
    """Start Flower (Celery monitoring) against poolq's broker; other options go to Flower."""
    from app import create_app

    celery = create_app(settings_from_env()).extensions["celery"]
    celery.start(argv=["flower", f"--port={port}", *ctx.args])
