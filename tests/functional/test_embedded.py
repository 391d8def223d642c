"""`poolq up`: Redis, a worker, beat and the API with no external service, supervised.

One `poolq up` (JSON logs, a tiny model) serves the module's tests, in order:
a second instance on its home is refused; /ready means loaded; a mixed load
runs for about 30 s while each child is killed with -9 in turn, and every job
ends; every log line parses as JSON and carries the ids. The demo quickstart
path runs on its own instance.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests_support import free_port

EXTERNAL = ("DATABASE_URL", "REDIS_URL", "POOLQ_DATABASE_URL", "POOLQ_BROKER_URL", "POOLQ_MODELS")
FINAL = ("succeeded", "failed", "cancelled")


class Up:
    """A `poolq up` child process and its log."""

    def __init__(self, tmp_path, args: list[str], env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = tmp_path / "home"
        self.env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
        self.env.update({"POOLQ_HOME": str(self.home), "POOLQ_MAX_WAIT_MS": "2", **(env or {})})
        self.log_path = tmp_path / "up.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(self.port), *args],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, needle: str, timeout: float = 240, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text[after:]:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"poolq up exited with {self.proc.returncode}:\n{text[-5000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} never printed:\n{self.text()[-5000:]}")

    def child_pid(self, name: str) -> int:
        return int(re.findall(rf"started the {name} \(pid (\d+)\)", self.text())[-1])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        finally:
            self.log.close()


def poll_job(url: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = requests.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
            if job["status"] in FINAL or time.monotonic() > deadline:
                return job
        except (requests.RequestException, ValueError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


class Hooks:
    """A webhook receiver on loopback: the job ids it was told about."""

    def __init__(self):
        self.job_ids: set[str] = set()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hooks.job_ids.add(body["id"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture(scope="module")
def hooks():
    receiver = Hooks()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def up(tmp_path_factory, served_models, hooks):
    instance = Up(tmp_path_factory.mktemp("up"), ["--model", f"tiny={served_models['tiny']}"], env={
        "POOLQ_LOG_FORMAT": "json", "POOLQ_ACCESS_LOG": "1", "POOLQ_WEBHOOK_ALLOWLIST": "127.0.0.1",
        # Recovery within the test's time: a dead worker's leases lapse in 4 s, and jobs whose
        # messages died with Redis are re-sent 5 s after they were queued.
        "POOLQ_LEASE_S": "4", "POOLQ_REQUEUE_AFTER_S": "5", "POOLQ_REDELIVER_AFTER_S": "10",
        "POOLQ_BATCH_CHUNK_LINES": "20"})
    instance.wait_for("API listening on")
    yield instance
    assert instance.stop() == 0, instance.text()[-5000:]
    for line in instance.text().splitlines():  # the shutdown's lines too
        assert not line.strip() or json.loads(line), line


def test_a_second_instance_on_the_same_home_is_refused(up):
    for command in (["up", "--port", str(free_port())], ["worker"]):
        done = subprocess.run([sys.executable, "-m", "app.cli", *command], env=up.env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0
        assert str(up.home) in done.stderr and f"PID {up.proc.pid}" in done.stderr, done.stderr
        assert "POOLQ_HOME=" in done.stderr


def test_ready_means_the_model_is_loaded_and_the_first_job_loads_nothing(up):
    assert requests.get(f"{up.url}/ready", timeout=10).json()["checks"]["models"] == "ok"
    text = up.text()
    assert text.count("loading model tiny") == 1 and text.index("ready: tiny loaded") < text.index("API listening")
    response = requests.post(f"{up.url}/v1/jobs", json={"task": "classify", "model": "tiny", "input": ["a", "b"]},
                             timeout=10)
    assert response.status_code == 202, response.text
    assert poll_job(up.url, response.json()["id"])["status"] == "succeeded"
    assert up.text().count("loading model tiny") == 1  # the job ran on the model loaded before /ready


class Load:
    """Jobs (some with webhooks, some cancelled) and a batch, sent until `stop`; tolerant of the
    moments when the API itself is being restarted."""

    def __init__(self, url: str, hook: str):
        self.url, self.hook = url, hook
        self.jobs: dict[str, str] = {}  # id -> "plain" | "hooked" | "cancelled"
        self.stopping = threading.Event()
        self.errors: list[str] = []

    def post(self, path: str, **kwargs) -> requests.Response | None:
        deadline = time.monotonic() + 120  # an API restart takes seconds; on a loaded machine, many
        while time.monotonic() < deadline:
            try:
                response = requests.post(self.url + path, timeout=10, **kwargs)
                if response.status_code < 500:
                    return response
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.errors.append(f"POST {path} never answered")
        return None

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            kind = ("plain", "hooked", "cancelled")[i % 3]
            body = {"task": "classify", "model": "tiny", "input": [f"text {i}"] * (1 + i % 7)}
            if kind == "hooked":
                body["webhook"] = self.hook
            response = self.post("/v1/jobs", json=body)
            if response is not None:
                if response.status_code != 202:
                    self.errors.append(f"{response.status_code}: {response.text}")
                else:
                    job_id = response.json()["id"]
                    self.jobs[job_id] = kind
                    if kind == "cancelled":
                        self.post(f"/v1/jobs/{job_id}/cancel")
            i += 1
            time.sleep(0.1)


def test_mixed_load_survives_a_kill_9_of_each_child(up, hooks):
    lines = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/classify",
                                "body": {"model": "tiny", "input": f"line {i}"}}) + "\n" for i in range(60))
    uploaded = requests.post(f"{up.url}/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"},
                             timeout=10).json()
    batch = requests.post(f"{up.url}/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/classify",
                                                        "completion_window": "24h"}, timeout=10).json()
    load = Load(up.url, hooks.url)
    sender = threading.Thread(target=load.run, daemon=True)
    sender.start()
    try:
        for name in ("worker", "beat", "api", "redis"):
            time.sleep(3)
            offset = len(up.text())
            os.kill(up.child_pid(name), signal.SIGKILL)
            up.wait_for(f"started the {name} (pid", timeout=60, after=offset)
        time.sleep(3)
    finally:
        load.stopping.set()
        sender.join(timeout=60)
    assert load.errors == []
    assert up.proc.poll() is None
    for name in ("worker", "beat", "api", "redis"):
        assert re.search(rf"the {name} \(pid \d+\) was killed by SIGKILL", up.text()), name

    finished = {job_id: poll_job(up.url, job_id, timeout=90)["status"] for job_id in load.jobs}
    assert len(finished) >= 10, finished
    for job_id, kind in load.jobs.items():
        assert finished[job_id] in (("succeeded", "cancelled") if kind == "cancelled" else ("succeeded",)), \
            (job_id, kind, finished[job_id])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        batch = requests.get(f"{up.url}/v1/batches/{batch['id']}", timeout=10).json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.5)
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 60, batch
    hooked = {job_id for job_id, kind in load.jobs.items() if kind == "hooked"}
    # A delivery whose message went with the killed Redis (the embedded one keeps nothing) is
    # sent again by beat's webhook sweep once it is overdue: up to about a minute.
    deadline = time.monotonic() + 120
    while not hooked <= hooks.job_ids and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hooked <= hooks.job_ids, hooked - hooks.job_ids


def test_json_logs_parse_line_by_line_and_carry_the_ids(up):
    entries = []
    for line in up.text().splitlines():
        if line.strip():
            entries.append(json.loads(line))  # every line, from every process, is one JSON object
    assert all({"level", "logger", "message"} <= set(e) for e in entries)
    loggers = {e["logger"] for e in entries}
    assert {"poolq.embedded", "workers.main", "app.server", "poolq.access"} <= loggers, loggers
    accepted = [e for e in entries if e["logger"] == "poolq.access" and e["message"].startswith("POST /v1/jobs ")
                and " 202 " in e["message"]]
    assert accepted and all(e.get("job_id") and e.get("request_id") and e.get("tenant") for e in accepted)
    assert any(e.get("batch_id") for e in entries if e["logger"] == "poolq.access")
    # A worker's task lines carry the task's ids (a webhook delivery's, a batch's).
    assert any(e.get("task_id") and (e.get("delivery_id") or e.get("batch_id")) for e in entries
               if e["logger"].startswith("workers.")), [e for e in entries if e["logger"].startswith("workers.")]


def test_up_with_no_model_serves_the_demo_and_runs_the_example(tmp_path):
    up = Up(tmp_path, ["--example"])
    try:
        text = up.wait_for('"status": "succeeded"')
        assert "serving the demo model 'demo'" in text
        assert '"label": "positive"' in text or '"label": "negative"' in text
        assert "SQLite + embedded Redis" in text
    finally:
        assert up.stop() == 0


def test_a_child_that_cannot_start_ends_up_with_its_last_lines(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    up = Up(tmp_path, ["--model", f"broken={broken}"])
    assert up.proc.wait(timeout=120) == 1
    text = up.text()
    assert re.search(r"the (api|worker|maintenance|beat) exited with status \d+ during start; its last lines:", text), text
    assert "model 'broken'" in text.split("its last lines:")[1]


def test_a_port_in_use_is_said_at_once(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "app.cli", "up", "--port", str(port)], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "POOLQ_HOME": str(tmp_path / "home")})
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
