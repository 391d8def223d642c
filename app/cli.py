"""`poolq`: the command line. Heavy imports happen inside commands.

`worker --gpu N` must set CUDA_VISIBLE_DEVICES before anything imports
torch, so nothing at module level here may import torch (or models.engine).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace

import click

from app.config import Settings, SettingsError, parse_models

MODEL_HELP = "NAME=SOURCE[?revision=R&dtype=D&task=T], repeatable; SOURCE is a local directory or a hub id."


def _settings(models: tuple[str, ...] = (), **overrides) -> Settings:
    try:
        settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
        if models:
            settings = settings.with_models(parse_models(models))
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


@click.group()
@click.option("--log-level", default="INFO", show_default=True, envvar="POOLQ_LOG_LEVEL")
def cli(log_level: str) -> None:
    """poolq: transformer pooling models (classify, NER, scoring) as a job service."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--model", "models", multiple=True, help=MODEL_HELP)
@click.option("--host", default=None, help="Address the API binds (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port the API binds (default 8000).")
@click.option("--threads", type=int, default=None, help="Worker task threads.")
@click.option("--example/--no-example", default=False, help="Submit one example job once ready and print it.")
def up(models, host, port, threads, example) -> None:
    """Run API + worker + beat on this machine, with no external services by default."""
    from app.embedded import run_embedded

    settings = _settings(models, host=host, port=port, worker_threads=threads)
    sys.exit(run_embedded(settings, example=example))


@cli.command()
@click.option("--model", "models", multiple=True, help=MODEL_HELP)
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
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

    settings = _settings(models, host=host, port=port)
    serve(settings, workers=workers, threads=threads)


@cli.command()
@click.option("--model", "models", multiple=True, help=MODEL_HELP)
@click.option("--gpu", type=int, default=None, help="Pin this process to one GPU (sets CUDA_VISIBLE_DEVICES).")
@click.option("--threads", type=int, default=None, help="Celery task threads (default POOLQ_WORKER_THREADS or 8).")
@click.option("--beat/--no-beat", default=False, help="Also run Celery beat (exactly one per deployment).")
@click.option("--preload/--no-preload", default=True, help="Load every model before taking jobs.")
@click.option("--webhooks/--no-webhooks", default=True,
              help="Also deliver webhooks (off where `poolq webhooks` workers run, so slow receivers never hold "
                   "GPU worker threads).")
def worker(models, gpu, threads, beat, preload, webhooks) -> None:
    """Run a Celery worker that drains pool.<model> queues through the engine."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before torch is first imported
    settings = _settings(models, worker_threads=threads)
    from workers.main import run_worker, shared_helper_budget

    if gpu is not None and settings.tokenizer_processes is None:
        settings = replace(settings, tokenizer_processes=shared_helper_budget(len(settings.models)))

    run_worker(settings, beat=beat, preload=preload, name_suffix=f"gpu{gpu}" if gpu is not None else None,
               webhooks=webhooks)


@cli.command()
@click.option("--threads", type=int, default=16, show_default=True)
def webhooks(threads) -> None:
    """Run a CPU worker that only delivers webhooks (queue `webhooks`)."""
    from workers.main import run_webhook_worker

    run_webhook_worker(_settings(), threads=threads)


@cli.command()
def beat() -> None:
    """Run Celery beat: the job sweeper and other schedules (exactly one per deployment)."""
    from app import create_app

    settings = _settings()
    celery = create_app(settings).extensions["celery"]
    celery.start(argv=["beat", f"--schedule={settings.home / 'celerybeat-schedule'}", "--loglevel=INFO"])


@cli.command("demo-model")
@click.argument("target", type=click.Path(file_okay=False))
def demo_model(target) -> None:
    """Build the offline demo classifier into TARGET (no hub needed)."""
    from models.demo import DEMO_DESCRIPTION, materialize_demo_model

    path = materialize_demo_model(target)
    click.echo(f"{path}: {DEMO_DESCRIPTION}")


@cli.command()
def migrate() -> None:
    """Bring the database schema to the latest revision."""
    from app.db.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo(f"database at head: {settings.database_url.split('@')[-1]}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", type=int, default=5555, show_default=True)
@click.pass_context
def flower(ctx, port) -> None:
    """Start Flower (Celery monitoring) against poolq's broker."""
    from app import create_app

    celery = create_app(_settings()).extensions["celery"]
    celery.start(argv=["flower", f"--port={port}", *ctx.args])


from app.cli_schedules import schedules  # noqa: E402 - HTTP client commands; imports neither the app nor torch

cli.add_command(schedules)


@cli.group()
def keys() -> None:
    """Create, list and revoke API keys (each belongs to a tenant)."""


def _session():
    from app.db import make_engine, make_session_factory

    return make_session_factory(make_engine(_settings().database_url))()


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name; created if new.")
@click.option("--name", default=None, help="A label for the key.")
@click.option("--max-queued-jobs", type=int, default=None, help="The tenant's queued-job limit (429 past it).")
def keys_create(tenant, name, max_queued_jobs) -> None:
    from app.tenants.services import create_key

    with _session() as session:
        created = create_key(session, tenant, name, max_queued_jobs)
        session.commit()
    click.echo(f"key {created.id} for tenant {created.tenant} (shown once; store it now):")
    click.echo(created.key)


@keys.command("list")
@click.option("--tenant", default=None)
def keys_list(tenant) -> None:
    from app.tenants.services import list_keys

    with _session() as session:
        for key, owner in list_keys(session, tenant):
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            click.echo(f"{key.id}  pq_{key.prefix}_…  tenant={owner.name}  name={key.name or '-'}  {state}")


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key) -> None:
    """Revoke KEY, given as its id or its prefix."""
    from app.tenants.services import revoke_key

    with _session() as session:
        done = revoke_key(session, key)
        session.commit()
    if not done:
        raise click.ClickException(f"no active key {key!r}")
    click.echo(f"revoked {key}")


from app.cli_batch import batch  # noqa: E402 - HTTP client commands; imports neither the app nor torch

cli.add_command(batch)


def main() -> None:
    cli(prog_name="poolq")


if __name__ == "__main__":
    main()
