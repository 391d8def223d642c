"""`poolq flower` monitors the broker; tasks show the job id and the model."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from tests_support import free_port


@pytest.fixture
def flower_url(deployment_env, worker_process, tmp_path):
    port = free_port()
    env = {**os.environ, **deployment_env, "FLOWER_UNAUTHENTICATED_API": "1"}
    log = open(tmp_path / "flower.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "flower", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/workers", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail((tmp_path / "flower.log").read_text())
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def test_flower_shows_jobs_with_id_and_model(flower_url, client):
    # Flower answers HTTP before its event receiver has subscribed, and Redis
    # drops events nobody listens to: submit until one of our jobs shows up.
    deadline = time.monotonic() + 60
    submitted: list[str] = []
    while time.monotonic() < deadline:
        job = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "watched"}).json()
        client.wait_job(job["id"])
        submitted.append(job["id"])
        for _ in range(10):
            tasks = requests.get(f"{flower_url}/api/tasks", timeout=5).json()
            seen = [t for t in tasks.values() if any(job_id in str(t.get("args")) for job_id in submitted)]
            if seen and seen[0].get("state") == "SUCCESS":
                assert "tiny" in str(seen[0].get("kwargs"))
                assert seen[0]["name"] == "poolq.run_job"
                return
            time.sleep(0.5)
    pytest.fail(f"flower never showed any of the jobs {submitted}")
