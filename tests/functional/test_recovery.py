"""Accepted work is never lost: a worker killed mid-job, a broker down at submit.

The killed-worker test runs its own `poolq worker` processes on a namespace
of their own, so killing one never disturbs the shared worker of the other
tests; the broker-down test needs no kill, and runs on that shared worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import create_app
from app.celery import SWEEP_JOBS
from app.config import Settings

REPO = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(self, env: dict, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env, cwd=REPO,
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log.read_text()}")
            if "ready." in self.log.read_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def own_model(deployment_env: dict, name: str) -> str:
    """The tiny model served under another name. Workers take over the lapsed leases of the
    models they serve, so a test that kills workers gives its jobs a model the suite's shared
    worker does not serve; then only the test's own workers recover them."""
    path = deployment_env["POOLQ_MODELS"].split(",")[0].partition("=")[2]
    return f"{name}={path}"


@pytest.fixture
def recovery_env(deployment_env, namespace):
    # Leases of 2 s: a dead worker's jobs are taken over within seconds.
    return {**deployment_env, "POOLQ_NAMESPACE": f"{namespace}rec.", "POOLQ_LEASE_S": "2",
            "POOLQ_REQUEUE_AFTER_S": "2", "POOLQ_MODELS": own_model(deployment_env, "tinyrec"),
            "POOLQ_WORKER_METRICS_PORT": "0"}  # the shared worker holds the metrics port


@pytest.fixture
def api(recovery_env, api_keys):
    app = create_app(Settings.from_env(recovery_env))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    client.celery = app.extensions["celery"]
    client.settings = app.extensions["poolq"].settings
    return client


def wait_status(api, job_id: str, wanted: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json
        if job["status"] in wanted:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is {job['status']}, never {wanted}")


def sweep(api) -> None:
    api.celery.send_task(SWEEP_JOBS, queue=api.settings.maintenance_queue)


def test_a_job_survives_its_worker_killed_mid_run(recovery_env, api, tmp_path):
    env = {**os.environ, **recovery_env}
    first = Worker(env, tmp_path / "first.log")
    second = None
    try:
        first.wait_ready()
        texts = [f"a sentence to classify, number {i}" for i in range(12000)]
        job_id = api.post("/v1/jobs", json={"task": "classify", "model": "tinyrec", "input": texts}).json["id"]
        wait_status(api, job_id, {"running"})
        first.kill()  # SIGKILL: no ack, no clean shutdown
        second = Worker(env, tmp_path / "second.log")
        second.wait_ready()
        # No sweep: the second worker's heartbeat takes over the job once its lease lapses.
        job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=120)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2  # taken over by the second worker, once
        assert len(job["result"]["data"]) == 12000
        assert [d["index"] for d in job["result"]["data"]] == list(range(12000))
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()


def test_a_job_accepted_while_the_broker_was_down_runs_once_it_is_back(deployment_env, worker_process, api_keys):
    """The row is committed first; the sweeper sends what the broker refused. The suite's
    shared worker runs the sweep and the job."""
    down = create_app(Settings.from_env({**deployment_env, "POOLQ_BROKER_URL": "redis://127.0.0.1:1/0"}))
    down = down.test_client()
    down.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    response = down.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": ["kept", "safe"]})
    assert response.status_code == 202
    job_id = response.json["id"]
    app = create_app(Settings.from_env(deployment_env))
    up = app.test_client()
    up.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    up.celery, up.settings = app.extensions["celery"], app.extensions["poolq"].settings
    assert up.get(f"/v1/jobs/{job_id}").json["status"] == "queued"
    sweep(up)
    job = wait_status(up, job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded" and len(job["result"]["data"]) == 2
