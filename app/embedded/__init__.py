"""`poolq up`: Redis, a worker, a maintenance worker, beat and the API on one machine, supervised.

The children are the same `poolq worker`, `poolq maintenance`, `poolq beat` and `poolq api` that
production runs, on a real Redis that `poolq up` starts for itself (a unix
socket under POOLQ_HOME); only the database differs (a SQLite file), so the
embedded mode runs the production code paths. One `poolq up` per home.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import requests

from app.config import ModelSpec, Settings, embedded_redis_socket
from app.embedded.home_lock import SUPERVISOR_ENV, HomeLock
from app.embedded.redis_server import redis_command, wait_for_redis
from app.embedded.supervisor import CannotStart, Child, describe_exit

log = logging.getLogger("poolq.embedded")

READY_TIMEOUT_S = 600
REDIS_START_S = 20
EXAMPLE_TEXTS = ["poolq makes serving classifiers easy and fast.", "The service was slow and the results were wrong."]


class _Stop:
    requested = False


def run_embedded(settings: Settings, example: bool = False) -> int:
    from app.db.migrate import upgrade

    lock = HomeLock(settings.home).acquire()  # raises HomeInUse: the CLI prints it and exits 1
    port_problem = _port_taken(settings.host, settings.port)
    if port_problem:
        log.error("cannot listen on %s:%d (%s); pick another with --port or POOLQ_PORT", settings.host,
                  settings.port, port_problem)
        lock.release()
        return 1
    if not settings.models:
        settings = _with_demo_model(settings)
    upgrade(settings.database_url)
    children = _children(settings)
    stop = _Stop()

    def _on_signal(signum, _frame):
        stop.requested = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    url = f"http://{_client_host(settings.host)}:{settings.port}"
    try:
        if not _start(settings, children, url, stop):
            return 1
        _banner(settings, url)
        if example:
            _run_example(url, settings.models[0].name)
        while not stop.requested:
            for child in children:
                child.check()
            time.sleep(0.2)
        log.info("stopping")
        return 0
    except CannotStart as exc:
        log.error("%s", exc)
        return 1
    finally:
        _stop_all(settings, children)
        lock.release()


def _port_taken(host: str, port: int) -> str | None:
    """Said at once, not after the API child has retried and failed (a newcomer's usual first error)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _children(settings: Settings) -> list[Child]:
    env = _child_env(settings)
    poolq = [sys.executable, "-m", "app.cli"]
    children = []
    if settings.embedded_broker:
        socket = embedded_redis_socket(settings.home)
        # Its start-up notes (the banner, overcommit advice for snapshots it never takes) are noise here.
        children.append(Child("redis", redis_command(socket, settings.home / "redis"), env, echo=False))
    children += [
        # Batch validation and finalization and the sweeps in a process of their own: their Python
        # never holds the GIL the worker's device thread needs (see workers/main.run_cpu_worker).
        Child("worker", [*poolq, "worker", "--no-maintenance"], env),
        Child("maintenance", [*poolq, "maintenance"], env),
        Child("api", [*poolq, "api", "--workers", "1", "--threads", "32"], env),
        Child("beat", [*poolq, "beat"], env, after_ready=True),
    ]
    return children


def _start(settings: Settings, children: list[Child], url: str, stop: _Stop) -> bool:
    """Start every child and wait until the API is ready (every model loaded in the worker).
    A child that dies meanwhile cannot start: nothing is retried before the service first ran.
    Beat starts once the rest is ready: the first job needs none of its sweeps, and on a small
    machine its start-up would take CPU from the worker's model load."""
    for child in children:
        if child.after_ready:
            continue
        child.start()
        if child.name == "redis" and not wait_for_redis(settings.broker_url, REDIS_START_S,
                                                        lambda: child.exited() is None and not stop.requested):
            return _failed(child, stop)
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting_for = None
    while time.monotonic() < deadline and not stop.requested:
        for child in children:
            if child.proc is not None and child.exited() is not None:
                return _failed(child, stop)
        try:
            response = requests.get(f"{url}/ready", timeout=2)
            if response.status_code == 200:
                for child in children:
                    if child.after_ready:
                        child.start()
                return True
            models = response.json().get("checks", {}).get("models", "")
            if models != waiting_for and models.startswith("loading"):
                log.info("waiting for the worker: %s", models)
                waiting_for = models
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    if not stop.requested:
        log.error("the service did not become ready within %d s", READY_TIMEOUT_S)
    return False


def _failed(child: Child, stop: _Stop) -> bool:
    if not stop.requested:
        code = child.exited()
        how = describe_exit(code) if code is not None else "did not answer"
        log.error("the %s %s during start; its last lines:\n%s", child.name, how, child.last_output())
    return False


def _stop_all(settings: Settings, children: list[Child]) -> None:
    # The API first (no new work), then the workers (they finish or give back what they hold,
    # and need Redis for their acks), then beat, Redis last.
    by_name = {child.name: child for child in children}
    grace = settings.shutdown_grace_s + 15
    for name, timeout in (("api", 20), ("worker", grace), ("maintenance", grace), ("beat", 10), ("redis", 10)):
        if name in by_name:
            by_name[name].stop(timeout)


def _with_demo_model(settings: Settings) -> Settings:
    from models.demo import DEMO_DESCRIPTION, materialize_demo_model

    target = settings.home / "models" / "demo"
    if not (target / "config.json").is_file():
        log.info("no model configured: building the demo model into %s (first run only, some seconds)", target)
    path = materialize_demo_model(target)
    log.info("no model configured, serving the demo model 'demo' from %s", path)
    log.info("%s", DEMO_DESCRIPTION)
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
        SUPERVISOR_ENV: str(os.getpid()),
        "PYTHONUNBUFFERED": "1",  # their lines reach the terminal as they are written, through our relay
    })
    return env


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)


def _banner(settings: Settings, url: str) -> None:
    names = ", ".join(spec.name for spec in settings.models)
    broker = "embedded Redis" if settings.embedded_broker else "external Redis"
    database = "SQLite" if settings.embedded_database else "external database"
    log.info("API listening on %s (%s + %s); serving %s, loaded and ready", url, database, broker, names)
    if not settings.auth_required:
        log.warning("AUTHENTICATION IS OFF. Anyone who can reach this port can submit and read every job. "
                    "Set POOLQ_AUTH=required and create keys with `poolq keys create` to turn it on.")
    log.info("submit a job:  curl -s %s/v1/jobs -H 'Content-Type: application/json' "
             "-d '{\"task\": \"classify\", \"model\": \"%s\", \"input\": \"hello\"}'", url, settings.models[0].name)


def _run_example(url: str, model: str) -> None:
    response = requests.post(f"{url}/v1/jobs", json={"task": "classify", "model": model, "input": EXAMPLE_TEXTS},
                             timeout=30)
    response.raise_for_status()
    job = response.json()
    log.info("example job %s is %s; polling %s%s", job["id"], job["status"], url, response.headers["Location"])
    deadline = time.monotonic() + 120
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = requests.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json()
    log.info("example job %s:\n%s", job["id"], json.dumps(job, indent=2))
