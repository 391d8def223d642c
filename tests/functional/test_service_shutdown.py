"""SIGTERM for `poolq webhooks` and `poolq beat`: finish what finishes within the grace, hand the
rest back at once, exit 0.

Real processes of their own (a namespace of their own on the shared Redis; beat on a private
redis-server that the test pauses), and a real HTTP receiver that can hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from app import create_app
from app.config import Settings
from app.db.base import utcnow
from app.jobs.records import Job
from app.tenants.records import Tenant
from app.tenants.services import create_key
from app.webhooks.dispatch import send_deliveries
from app.webhooks.records import WebhookAttempt, WebhookDelivery
from app.webhooks.services import job_event
from private_servers import PrivateRedis

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 3


class Service:
    """`poolq <command>` as a child process, its output in a file."""

    def __init__(self, command: str, env: dict, log: Path, *args: str):
        self.log_path = log
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", command, *args], env=env, cwd=REPO,
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def wait_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def terminate_and_wait(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class HangingReceiver:
    """/hang: the first request never gets an answer (until the test ends); /slow answers after a
    second; anything else, and every later request, answers 200 at once."""

    def __init__(self):
        self.arrived: list[tuple[str, str]] = []  # (path, webhook-id), when each request came in
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                first = not any(path == self.path for path, _ in receiver.arrived)
                receiver.arrived.append((self.path, self.headers["webhook-id"]))
                if self.path == "/hang" and first:
                    receiver.release.wait(120)
                elif self.path == "/slow":
                    time.sleep(1)
                try:
                    self.send_response(200)
                    self.end_headers()
                except OSError:
                    pass  # the worker cut the connection

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def wait(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.arrived) < count:
            assert time.monotonic() < deadline, f"{len(self.arrived)} of {count} requests arrived"
            time.sleep(0.05)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def receiver():
    receiver = HangingReceiver()
    yield receiver
    receiver.close()


def emit(poolq, tenant_id, url: str) -> uuid.UUID:
    """A finished job subscribed to `url`; its `completed` delivery written and sent as the worker does."""
    now = utcnow()
    job_id = uuid.uuid4()
    with poolq.session_factory() as session:
        session.add(Job(id=job_id, tenant_id=tenant_id, task="classify", model="tiny", status="succeeded",
                        request={"task": "classify", "model": "tiny", "input": ["x"]}, num_inputs=1, attempts=1,
                        webhook_url=url, webhook_events=["completed"], created_at=now, started_at=now,
                        finished_at=now))
        (delivery_id,) = job_event(session, job_id, "completed")
        session.commit()
    send_deliveries(poolq.celery, [delivery_id])
    return delivery_id


def settled(poolq, delivery_id, timeout: float) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    deadline = time.monotonic() + timeout
    while True:
        with poolq.session_factory() as session:
            row = session.get(WebhookDelivery, delivery_id)
            attempts = list(session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
                                            .order_by(WebhookAttempt.number)))
        if row.status != "pending" or time.monotonic() > deadline:
            return row, attempts
        time.sleep(0.1)


def test_webhooks_worker_sigterm_finishes_within_the_grace_and_hands_back_the_rest(
        deployment_env, namespace, receiver, tmp_path):
    env = {**deployment_env, "POOLQ_NAMESPACE": f"{namespace}sdw{uuid.uuid4().hex[:6]}.",
           "POOLQ_SHUTDOWN_GRACE_S": str(GRACE_S),
           # Without the hand-back, the hung attempt's lease (5 + 60 + 30 s) would hold its retry back.
           "POOLQ_WEBHOOK_READ_TIMEOUT_S": "60"}
    poolq = create_app(Settings.from_env(env)).extensions["poolq"]
    with poolq.session_factory() as session:
        name = create_key(session, f"shutdown-{uuid.uuid4().hex[:8]}", name="shutdown-test").tenant
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == name))
        session.commit()
    process_env = {**os.environ, **env}
    first = Service("webhooks", process_env, tmp_path / "first.log", "--threads", "4")
    second = None
    try:
        first.wait_log("Connected to")  # messages sent from now on are taken
        slow = emit(poolq, tenant_id, receiver.url("/slow"))
        hung = emit(poolq, tenant_id, receiver.url("/hang"))
        receiver.wait(2)  # both attempts are under way
        code, took = first.terminate_and_wait(timeout=GRACE_S + 20)
        assert code == 0, first.log_path.read_text()[-3000:]
        assert took < GRACE_S + 10, f"exited {took:.1f} s after SIGTERM"
        row, attempts = settled(poolq, slow, timeout=5)
        assert row.status == "succeeded" and [a.status_code for a in attempts] == [200]  # finished in the grace
        row, attempts = settled(poolq, hung, timeout=1)
        assert row.status == "pending" and "interrupted" in attempts[0].error
        second = Service("webhooks", process_env, tmp_path / "second.log")
        row, attempts = settled(poolq, hung, timeout=30)  # taken by the new worker at once: no lease to wait out
        assert row.status == "succeeded", [(a.status_code, a.error) for a in attempts]
        assert [a.status_code for a in attempts] == [None, 200]
        hung_requests = [webhook_id for path, webhook_id in receiver.arrived if path == "/hang"]
        assert len(hung_requests) == 2 and len(set(hung_requests)) == 1  # one event, sent again under its id
    finally:
        for service in (first, second):
            if service is not None:
                service.kill()


def overdue_schedule(settings: Settings) -> None:
    """Beat's schedule file with every entry last run an hour ago: the first tick sends at once."""
    import datetime as dt

    from celery.beat import PersistentScheduler

    settings.home.mkdir(parents=True, exist_ok=True)
    scheduler = PersistentScheduler(app=create_app(settings).extensions["celery"],
                                    schedule_filename=str(settings.home / "celerybeat-schedule"))
    for entry in scheduler.schedule.values():
        entry.last_run_at = entry.default_now() - dt.timedelta(hours=1)
    scheduler.close()  # writes the file


def test_beat_sigterm_finishes_the_send_under_way_and_exits_0(deployment_env, namespace, tmp_path):
    broker = PrivateRedis()
    broker.start()
    env = {**deployment_env, "POOLQ_BROKER_URL": broker.url, "POOLQ_HOME": str(tmp_path / "busy"),
           "POOLQ_NAMESPACE": f"{namespace}sdb.", "POOLQ_SHUTDOWN_GRACE_S": "20",
           "POOLQ_LOG_LEVEL": "DEBUG"}  # Celery's beat says when it starts at INFO, quiet in poolq
    overdue_schedule(Settings.from_env(env))
    broker.pause()  # beat's first send hangs
    busy = Service("beat", {**os.environ, **env}, tmp_path / "busy.log")
    idle = Service("beat", {**os.environ, **env, "POOLQ_HOME": str(tmp_path / "idle")}, tmp_path / "idle.log")
    try:
        idle.wait_log("beat: Starting")  # nothing is due for 10 s
        code, took = idle.terminate_and_wait(timeout=30)
        assert code == 0 and took < 10, (code, took)  # asleep between ticks: it stops at once

        busy.wait_log("Connection error", timeout=30)
        busy.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        broker.resume()
        assert busy.proc.wait(timeout=30) == 0, busy.log_path.read_text()[-3000:]
        client = redis.Redis.from_url(broker.url)
        queued = [m for key in client.keys(f"{namespace}sdb.*") if client.type(key) == b"list"
                  for m in client.lrange(key, 0, -1)]
        assert any(b'"task": "poolq.' in m for m in queued), queued  # the send under way was finished
    finally:
        for service in (busy, idle):
            service.kill()
        broker.stop()
