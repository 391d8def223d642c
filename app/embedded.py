"""`poolq up`: the API, a worker and beat on one machine, as child processes.

The children are the same `poolq api` and `poolq worker` that production
runs; only the defaults differ (a SQLite file and a filesystem broker under
POOLQ_HOME), so the embedded mode exercises the production code paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import click
import requests

from app.config import ModelSpec, Settings
from app.db.migrate import upgrade

READY_TIMEOUT_S = 600
EXAMPLE_TEXTS = ["poolq makes serving classifiers easy and fast.", "The service was slow and the results were wrong."]


def run_embedded(settings: Settings, example: bool = False) -> int:
    settings.home.mkdir(parents=True, exist_ok=True)
    if not settings.models:
        settings = _with_demo_model(settings)
    upgrade(settings.database_url)
    env = _child_env(settings)
    base = [sys.executable, "-m", "app.cli"]
    children = {
        "worker": subprocess.Popen([*base, "worker", "--beat"], env=env),
        "api": subprocess.Popen([*base, "api", "--workers", "1", "--threads", "32"], env=env),
    }
    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    url = f"http://{_client_host(settings.host)}:{settings.port}"
    try:
        if not _wait_ready(url, children, lambda: stopping):
            return 1
        _banner(settings, url)
        if example:
            _run_example(url, settings.models[0].name)
        while not stopping:
            for name, proc in children.items():
                if proc.poll() is not None:
                    click.echo(f"poolq: the {name} process exited with {proc.returncode}; stopping", err=True)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        _terminate(children)


def _with_demo_model(settings: Settings) -> Settings:
    from models.demo import DEMO_DESCRIPTION, materialize_demo_model

    path = materialize_demo_model(settings.home / "models" / "demo")
    click.echo(f"poolq: no model configured, serving the demo model 'demo' from {path}")
    click.echo(f"poolq: {DEMO_DESCRIPTION}")
    return settings.with_models((ModelSpec(name="demo", source=str(path)),))


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "POOLQ_HOME": str(settings.home),
        "POOLQ_DATABASE_URL": settings.database_url,
        "POOLQ_BROKER_URL": settings.broker_url,
        "POOLQ_MODELS": ",".join(spec.to_item() for spec in settings.models),
        "POOLQ_HOST": settings.host,
        "POOLQ_PORT": str(settings.port),
        "POOLQ_WORKER_THREADS": str(settings.worker_threads),
    })
    return env


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)


def _wait_ready(url: str, children: dict[str, subprocess.Popen], stopping) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():
        for name, proc in children.items():
            if proc.poll() is not None:
                click.echo(f"poolq: the {name} process exited with {proc.returncode} during start", err=True)
                return False
        try:
            if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.25)
    if not stopping():
        click.echo(f"poolq: the API did not become ready within {READY_TIMEOUT_S} s", err=True)
    return False


def _banner(settings: Settings, url: str) -> None:
    names = ", ".join(spec.name for spec in settings.models)
    mode = "embedded (SQLite + filesystem broker)" if settings.embedded_database else "external services"
    click.echo(f"poolq: API listening on {url} ({mode}); serving {names}")
    if not settings.auth_required:
        click.echo("poolq: WARNING: AUTHENTICATION IS OFF. Anyone who can reach this port can submit and read "
                   "every job. Set POOLQ_AUTH=required and create keys with `poolq keys create` to turn it on.")
    click.echo(f"poolq: submit a job:  curl -s {url}/v1/jobs -H 'Content-Type: application/json' "
               f"-d '{{\"task\": \"classify\", \"model\": \"{settings.models[0].name}\", \"input\": \"hello\"}}'")


def _run_example(url: str, model: str) -> None:
    response = requests.post(f"{url}/v1/jobs", json={"task": "classify", "model": model, "input": EXAMPLE_TEXTS},
                             timeout=30)
    response.raise_for_status()
    job = response.json()
    click.echo(f"poolq: example job {job['id']} is {job['status']}; polling {url}{response.headers['Location']}")
    deadline = time.monotonic() + 120
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = requests.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json()
    click.echo(json.dumps(job, indent=2))


def _terminate(children: dict[str, subprocess.Popen]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in children.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
