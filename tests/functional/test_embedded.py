"""`poolq up`: API + worker + beat with no external service, the same code paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests_support import free_port

EXTERNAL = ("DATABASE_URL", "REDIS_URL", "POOLQ_DATABASE_URL", "POOLQ_BROKER_URL", "POOLQ_MODELS")


def start_up(tmp_path, args: list[str]) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    env.update({"POOLQ_HOME": str(tmp_path / "home"), "POOLQ_MAX_WAIT_MS": "2"})
    log = open(tmp_path / "up.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port), *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


def wait_for(log, needle: str, proc: subprocess.Popen, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log.seek(0)
        text = log.read()
        if needle in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"poolq up exited with {proc.returncode}:\n{text}")
        time.sleep(0.25)
    log.seek(0)
    raise AssertionError(f"{needle!r} never printed:\n{log.read()}")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def test_up_serves_a_local_model_without_external_services(tmp_path, served_models):
    proc, url, log = start_up(tmp_path, ["--model", f"tiny={served_models['tiny']}"])
    try:
        text = wait_for(log, "API listening on", proc)
        assert url in text and "embedded (SQLite + filesystem broker)" in text
        response = requests.post(f"{url}/v1/jobs", json={"task": "classify", "model": "tiny", "input": ["a", "b c"]},
                                 timeout=10)
        assert response.status_code == 202, response.text
        job = response.json()
        deadline = time.monotonic() + 60
        while job["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = requests.get(f"{url}{response.headers['Location']}", timeout=10).json()
        assert job["status"] == "succeeded", job
        assert [d["index"] for d in job["result"]["data"]] == [0, 1]
        assert job["result"]["data"][0]["label"] in ("neg", "neu", "pos")
        assert (tmp_path / "home" / "poolq.db").exists()
    finally:
        assert stop(proc) == 0


def test_up_with_no_model_serves_the_demo_and_runs_the_example(tmp_path):
    proc, url, log = start_up(tmp_path, ["--example"])
    try:
        text = wait_for(log, '"status": "succeeded"', proc)
        assert "serving the demo model 'demo'" in text
        assert '"label": "positive"' in text or '"label": "negative"' in text
    finally:
        assert stop(proc) == 0
