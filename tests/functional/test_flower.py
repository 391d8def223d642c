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
    job = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "watched"}).json()
    client.wait_job(job["id"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tasks = requests.get(f"{flower_url}/api/tasks", timeout=5).json()
        seen = [t for t in tasks.values() if job["id"] in str(t.get("args"))]
        if seen and seen[0].get("state") == "SUCCESS":
            assert "tiny" in str(seen[0].get("kwargs"))
            assert seen[0]["name"] == "poolq.run_job"
            return
        time.sleep(0.5)
    pytest.fail(f"flower never showed job {job['id']}: {list(tasks.values())[:3]}")
