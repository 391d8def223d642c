"""A real poolq deployment for functional tests: HTTP API + Celery worker process.

The API runs in a thread of the test process behind werkzeug's HTTP server
(so tests speak real HTTP); the worker is a separate `poolq worker` process
consuming from real Redis and writing to real Postgres.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from app import create_app
from app.config import Settings
from tests_support import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def served_models(model_dir):
    import tiny_models

    tiny = tiny_models.build_bert_classifier(model_dir / "tiny", num_labels=3,
                                             id2label={0: "neg", 1: "neu", 2: "pos"})
    add_chat_template(tiny)
    return {
        "tiny": tiny,
        "ce": tiny_models.build_bert_cross_encoder(model_dir / "ce"),
        "ner": tiny_models.build_bert_token_classifier(model_dir / "ner"),
    }


# A minimal chat template, so the chat forms of /classify and /pooling can run.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def add_chat_template(path) -> None:
    import json

    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config))


@pytest.fixture(scope="session")
def deployment_env(tmp_path_factory, pg_url, redis_url, served_models, namespace):
    home = tmp_path_factory.mktemp("poolq-home")
    return {
        "POOLQ_HOME": str(home),
        "POOLQ_DATABASE_URL": pg_url,
        "POOLQ_BROKER_URL": redis_url,
        "POOLQ_MODELS": ",".join(f"{name}={path}" for name, path in served_models.items()),
        "POOLQ_WORKER_THREADS": "8",
        # The GPU default, forced on here: large jobs in these tests are tokenized
        # by helper processes spawned from the Celery worker, as in production.
        "POOLQ_TOKENIZER_PROCESSES": "2",
        "POOLQ_MAX_WAIT_MS": "2",
        "POOLQ_NAMESPACE": namespace,
        "POOLQ_WORKER_METRICS_PORT": str(free_port()),
        # The tests' webhook receivers listen on loopback, which poolq refuses by default.
        "POOLQ_WEBHOOK_ALLOWLIST": "127.0.0.1",
        "POOLQ_WEBHOOK_RETRY_SCHEDULE": "0,1,2",
        "POOLQ_WEBHOOK_REQUEUE_AFTER_S": "1",
    }


@pytest.fixture(scope="session")
def settings(deployment_env):
    return Settings.from_env(deployment_env)


@pytest.fixture(scope="session")
def api_url(settings):
    app = create_app(settings)
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _start_and_wait(argv: list[str], env: dict[str, str], log_path) -> subprocess.Popen:
    """A `poolq` command as a child process, returned once it logs that it consumes."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", *argv], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own copy
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n{log_path.read_text()}")
        text = log_path.read_text()
        # Celery's own "ready." line, or poolq's "worker ... ready: <models> loaded" where Celery's is quieted.
        if "ready." in text or " ready: " in text:
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not start:\n{log_path.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def worker_process(deployment_env, api_url, tmp_path_factory):
    """Production's shape as child processes: `poolq worker --no-maintenance` (the engine's path)
    and `poolq maintenance` (batch validation and finalization, the sweeps; no torch). Every batch
    test thus validates and finalizes in another process than the one that runs its chunks; the
    one-process default (`--maintenance`) runs in the recovery tests' workers."""
    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, **deployment_env}
    maintenance = _start_and_wait(["maintenance"], env, logs / "maintenance.log")
    try:
        proc = _start_and_wait(["worker", "--no-maintenance"], env, logs / "worker.log")
    except BaseException:
        _stop(maintenance)
        raise
    yield proc
    _stop(proc)
    _stop(maintenance)


@pytest.fixture(scope="session")
def api_keys(pg_url):
    """Two tenants with a key each: `alpha` (the default client's) and `beta`."""
    from app.db import make_engine, make_session_factory
    from app.tenants.services import create_key

    engine = make_engine(pg_url)
    with make_session_factory(engine)() as session:
        keys = {name: create_key(session, name, name=f"{name}-test").key for name in ("alpha", "beta")}
        session.commit()
    engine.dispose()
    return keys


@pytest.fixture(scope="session")
def db(pg_url):
    """A session factory on the test database, for tests that look at or arrange rows directly."""
    from app.db import make_engine, make_session_factory

    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def client(api_url, api_keys):
    return Client(api_url, api_keys["alpha"])


@pytest.fixture
def other_client(api_url, api_keys):
    return Client(api_url, api_keys["beta"])


class Client:
    def __init__(self, base: str, key: str | None = None):
        self.base = base
        self.http = requests.Session()
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.http.post(self.base + path, timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.http.get(self.base + path, timeout=30, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.http.delete(self.base + path, timeout=30, **kwargs)

    def wait_batch(self, batch_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = self.get(f"/v1/batches/{batch_id}").json()
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                return batch
            time.sleep(0.1)
        raise AssertionError(f"batch {batch_id} still {batch['status']} after {timeout} s")

    def wait_job(self, job_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def pytest_configure(config):
    config.addinivalue_line("markers", "functional: goes over HTTP to a real worker")


