"""Webhook deliveries to a real HTTP receiver, verified with the `standardwebhooks` library.

Deliveries run on a webhook worker process of their own (a Celery worker on
this module's namespace, consuming only the webhooks queue), so retries,
countdowns and a worker restart are real. The module's API server carries the
webhook routes and sends redeliveries to that worker; the end-to-end test at
the bottom goes through the deployment's own API and worker instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from sqlalchemy import select, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from werkzeug.serving import make_server

from app import create_app
from app.db.base import utcnow
from app.errors import APIError
from app.jobs.records import Job, JobResult
from app.tenants.records import Tenant
from app.tenants.services import create_key
from app.webhooks.delivery import mark_unsent
from app.webhooks.dispatch import SWEEP_WEBHOOKS, send_deliveries, webhook_queue
from app.webhooks.services import job_event, validate_subscription
from app.webhooks.settings import webhook_settings
from tests_support import free_port

REPO = Path(__file__).resolve().parents[2]
SCHEDULE = (0.0, 1.0, 2.0)  # seconds before attempts 1, 2, 3 of a cycle
JITTER = 0.1
# This module's webhook settings: its worker reads them from its environment,
# its in-process API gets them through Settings.webhooks.
WEBHOOK_ENV = {
    "POOLQ_WEBHOOK_ALLOWLIST": "127.0.0.1",
    "POOLQ_WEBHOOK_RETRY_SCHEDULE": ",".join(str(s) for s in SCHEDULE),
    "POOLQ_WEBHOOK_RETRY_JITTER": str(JITTER),
    "POOLQ_WEBHOOK_REQUEUE_AFTER_S": "1",
    "POOLQ_WEBHOOK_READ_TIMEOUT_S": "3",
}
WORKER_MAIN = """
from app import create_app
from app.config import Settings
from app.webhooks.dispatch import webhook_queue
settings = Settings.from_env()
celery = create_app(settings).extensions["celery"]
import workers.tasks.webhooks  # registers deliver_webhook and sweep_webhooks
celery.worker_main(["worker", "--pool=threads", "--concurrency=8", f"--queues={webhook_queue(settings)}",
                    "--hostname=poolq-webhooks@%h", "--without-mingle", "--without-gossip", "--loglevel=INFO"])
"""


# -- the receiver -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: str
    at: float  # time.monotonic()

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """An HTTP endpoint that answers each path from a script of status codes (then 200)."""

    def __init__(self):
        self.received: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        self.changed = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def endpoint(self, *statuses: int) -> str:
        path = f"/hooks/{uuid.uuid4().hex}"
        self.scripts[path] = list(statuses)
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def wait(self, url: str, count: int, timeout: float = 15) -> list[Received]:
        path = url.split(str(self.server.server_port), 1)[1]
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(got := [r for r in self.received if r.path == path]) < count:
                if not self.changed.wait(deadline - time.monotonic()):
                    raise AssertionError(f"{path}: {len(got)} of {count} request(s) after {timeout} s")
        return got

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8")
                script = receiver.scripts.get(self.path, [])
                status = script.pop(0) if script else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"answer {status} ".encode() + b"x" * 4000)  # longer than the kept prefix
                with receiver.changed:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.monotonic()))
                    receiver.changed.notify_all()

            def log_message(self, *args):
                pass

        return Handler


# -- fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def hooks_settings(settings, namespace):
    # A namespace of their own: only this module's webhook worker takes these messages.
    return dataclasses.replace(settings, namespace=f"{namespace}wh.", webhooks=webhook_settings(WEBHOOK_ENV))


@pytest.fixture(scope="module")
def hooks_app(hooks_settings):
    app = create_app(hooks_settings)
    if "webhooks" not in app.blueprints:  # until create_app registers it
        from app.webhooks.routes import bp

        app.register_blueprint(bp)
    return app


@pytest.fixture(scope="module")
def poolq(hooks_app):
    return hooks_app.extensions["poolq"]


@pytest.fixture(scope="module")
def hooks_url(hooks_app):
    server = make_server("127.0.0.1", free_port(), hooks_app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


class WebhookWorker:
    def __init__(self, env: dict[str, str], log_path: Path):
        self.env, self.log_path, self.proc = env, log_path, None

    def start(self) -> None:
        self.log = open(self.log_path, "a")
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER_MAIN], env=self.env, cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "ready." not in self.log_path.read_text()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"webhook worker did not start:\n{self.log_path.read_text()[offset:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: whatever the worker held in memory (countdowns included) is gone."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def webhook_worker(deployment_env, hooks_settings, tmp_path_factory):
    env = {**os.environ, **deployment_env, **WEBHOOK_ENV, "POOLQ_NAMESPACE": hooks_settings.namespace}
    worker = WebhookWorker(env, tmp_path_factory.mktemp("logs") / "webhook-worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def tenant(poolq):
    """A tenant of this module's own, so rotating its secret disturbs no other test."""
    with poolq.session_factory() as session:
        key = create_key(session, f"hooks-{uuid.uuid4().hex[:8]}", name="webhooks-test")
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == key.tenant))
        session.commit()
    return SimpleNamespace(id=tenant_id, key=key.key)


@pytest.fixture
def api(hooks_url, tenant):
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {tenant.key}"

    def call(method: str, path: str, **kwargs) -> requests.Response:
        return http.request(method, hooks_url + path, timeout=30, **kwargs)
    return call


@pytest.fixture
def emit(poolq, tenant, webhook_worker):
    """A finished job subscribed to `url`, its event written and sent as the job services will."""
    def emit_event(url: str, event: str = "completed", send: bool = True) -> tuple[uuid.UUID, list[uuid.UUID]]:
        now = utcnow()
        job_id = uuid.uuid4()
        with poolq.session_factory() as session:
            session.add(Job(id=job_id, tenant_id=tenant.id, task="classify", model="tiny", status="succeeded",
                            request={"task": "classify", "model": "tiny", "input": ["great"]}, num_inputs=1,
                            attempts=1, prompt_tokens=3, webhook_url=url, webhook_events=["started", "completed"],
                            created_at=now, started_at=now, finished_at=now))
            session.flush()
            session.add(JobResult(job_id=job_id, body={"object": "list", "data": [{"index": 0, "label": "pos"}]}))
            delivery_ids = job_event(session, job_id, event)
            session.commit()
        if send:
            send_deliveries(poolq.celery, delivery_ids)
        return job_id, delivery_ids
    return emit_event


def current_secret(api) -> str:
    return api("GET", "/v1/webhooks/secret").json()["secret"]


def deliveries(api, job_id) -> list[dict]:
    response = api("GET", f"/v1/jobs/{job_id}/webhook-deliveries")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def settled(api, job_id, timeout: float = 10) -> dict:
    """The job's one delivery once no attempt is pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (delivery,) = deliveries(api, job_id)
        if delivery["status"] != "pending":
            return delivery
        time.sleep(0.05)
    raise AssertionError(f"delivery still pending: {delivery}")


# -- delivery -----------------------------------------------------------------------------------------------------

def test_a_completed_event_arrives_signed_with_the_job_resource(api, emit, receiver):
    url = receiver.endpoint()
    job_id, (delivery_id,) = emit(url)
    (request,) = receiver.wait(url, 1)
    payload = Webhook(current_secret(api)).verify(request.body, request.headers)
    assert payload["type"] == "job.completed"
    assert request.headers["webhook-id"] == f"msg_{delivery_id.hex}"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 10
    job = api("GET", f"/v1/jobs/{job_id}").json()
    assert payload == {"type": "job.completed", **job}
    delivery = settled(api, job_id)
    assert delivery["status"] == "succeeded" and delivery["event"] == "job.completed"
    (attempt,) = delivery["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None and attempt["latency_ms"] >= 0
    assert attempt["response_body"].startswith("answer 200 ") and len(attempt["response_body"]) == 1024


def test_a_forged_signature_does_not_verify(api, emit, receiver):
    url = receiver.endpoint()
    emit(url)
    (request,) = receiver.wait(url, 1)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(request.body, request.headers)


def test_503s_are_retried_on_the_schedule_with_the_same_webhook_id(api, emit, receiver):
    url = receiver.endpoint(503, 503)
    job_id, _ = emit(url)
    first, second, third = receiver.wait(url, 3)
    assert len({r.headers["webhook-id"] for r in (first, second, third)}) == 1
    secret = current_secret(api)
    for request in (first, second, third):
        Webhook(secret).verify(request.body, request.headers)
    # Each wait is its scheduled delay, give or take the jitter, plus delivery overhead.
    for gap, delay in ((second.at - first.at, SCHEDULE[1]), (third.at - second.at, SCHEDULE[2])):
        assert delay * (1 - JITTER) - 0.05 <= gap <= delay * (1 + JITTER) + 0.75, (gap, delay)
    delivery = settled(api, job_id)
    assert delivery["status"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 200]
    assert [a["number"] for a in delivery["attempts"]] == [1, 2, 3]


def test_429_is_retried_and_other_4xx_are_final(api, emit, receiver):
    limited = receiver.endpoint(429)
    rejected = receiver.endpoint(400)
    limited_job, _ = emit(limited)
    rejected_job, _ = emit(rejected)
    assert len(receiver.wait(limited, 2)) == 2
    assert settled(api, limited_job)["status"] == "succeeded"
    failed = settled(api, rejected_job)
    assert failed["status"] == "failed" and [a["status_code"] for a in failed["attempts"]] == [400]


def test_a_delivery_fails_once_the_schedule_is_spent(api, emit, receiver):
    url = receiver.endpoint(500, 502, 504, 500)
    job_id, _ = emit(url)
    delivery = settled(api, job_id, timeout=15)
    assert delivery["status"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 502, 504]
    assert len(receiver.wait(url, 3)) == 3


def test_connection_errors_are_recorded_and_retried(api, emit, receiver):
    job_id, _ = emit(f"http://127.0.0.1:{free_port()}/nobody-listens")  # a port nobody listens on
    delivery = settled(api, job_id, timeout=15)
    assert delivery["status"] == "failed" and len(delivery["attempts"]) == len(SCHEDULE)
    assert all(a["status_code"] is None and "Connection" in a["error"] for a in delivery["attempts"])


def test_410_disables_the_endpoint(api, emit, receiver, poolq, tenant):
    url = receiver.endpoint(410)
    job_id, (delivery_id,) = emit(url)
    delivery = settled(api, job_id)
    assert delivery["status"] == "disabled" and [a["status_code"] for a in delivery["attempts"]] == [410]
    time.sleep(SCHEDULE[1] * (1 + JITTER) + 0.3)
    assert len(receiver.wait(url, 1)) == 1  # no retry
    # No new deliveries to it, submits naming it are refused, and it cannot be redelivered to.
    assert emit(url)[1] == []
    with poolq.session_factory() as session, pytest.raises(APIError) as refused:
        validate_subscription(url, None, poolq.settings, session=session, tenant_id=tenant.id)
    assert refused.value.status == 400 and refused.value.param == "webhook" and "410" in refused.value.message
    response = api("POST", f"/v1/webhook-deliveries/{delivery_id}/redeliver")
    assert response.status_code == 409 and response.json()["error"]["type"] == "ConflictError"


def test_redelivery_sends_the_same_webhook_id_again(api, emit, receiver):
    url = receiver.endpoint()
    job_id, (delivery_id,) = emit(url)
    (first,) = receiver.wait(url, 1)
    settled(api, job_id)
    response = api("POST", f"/v1/webhook-deliveries/{delivery_id}/redeliver")
    assert response.status_code == 202, response.text
    assert response.json()["id"] == str(delivery_id)
    first, second = receiver.wait(url, 2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == f"msg_{delivery_id.hex}"
    assert second.body == first.body
    Webhook(current_secret(api)).verify(second.body, second.headers)
    delivery = settled(api, job_id)
    assert delivery["status"] == "succeeded" and len(delivery["attempts"]) == 2


def test_a_delivery_survives_a_worker_killed_while_it_waits_to_retry(api, emit, receiver, webhook_worker, poolq):
    url = receiver.endpoint(503)
    job_id, _ = emit(url)
    receiver.wait(url, 1)
    deadline = time.monotonic() + 5
    while not deliveries(api, job_id)[0]["attempts"] and time.monotonic() < deadline:
        time.sleep(0.02)  # until the retry is recorded and its countdown message held by the worker
    webhook_worker.kill()
    webhook_worker.start()
    time.sleep(SCHEDULE[1] * (1 + JITTER) + float(WEBHOOK_ENV["POOLQ_WEBHOOK_REQUEUE_AFTER_S"]))
    # Beat's sweeper finds the overdue delivery in the database and sends it again.
    poolq.celery.send_task(SWEEP_WEBHOOKS, queue=webhook_queue(poolq.settings))
    first, second = receiver.wait(url, 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert settled(api, job_id)["status"] == "succeeded"


def test_an_unsent_delivery_is_sent_by_the_sweeper(api, emit, receiver, poolq):
    url = receiver.endpoint()
    job_id, (delivery_id,) = emit(url, send=False)  # as if the broker refused after the commit
    with poolq.session_factory() as session:
        mark_unsent(session, [delivery_id])
        session.commit()
    poolq.celery.send_task(SWEEP_WEBHOOKS, queue=webhook_queue(poolq.settings))
    receiver.wait(url, 1)
    assert settled(api, job_id)["status"] == "succeeded"


# -- secrets ------------------------------------------------------------------------------------------------------

def test_rotation_signs_with_both_secrets_during_the_grace_period_only(api, emit, receiver, poolq, tenant):
    old = current_secret(api)
    rotated = api("POST", "/v1/webhooks/secret/rotate").json()
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old and rotated["previous_secret"] == old
    assert api("GET", "/v1/webhooks/secret").json()["previous_secret"] == old

    url = receiver.endpoint()
    emit(url)
    (during,) = receiver.wait(url, 1)
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(during.body, during.headers)
    Webhook(new).verify(during.body, during.headers)

    with poolq.session_factory() as session:  # the grace period ends
        grace = poolq.settings.webhooks.secret_grace_s
        session.execute(update(Tenant).where(Tenant.id == tenant.id).values(
            secret_rotated_at=utcnow() - dt.timedelta(seconds=grace + 1)))
        session.commit()
    assert "previous_secret" not in api("GET", "/v1/webhooks/secret").json()
    url = receiver.endpoint()
    emit(url)
    (after,) = receiver.wait(url, 1)
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)


# -- scoping and refusals -----------------------------------------------------------------------------------------

def test_other_tenants_deliveries_are_not_found(api, emit, receiver, hooks_url, client):
    job_id, (delivery_id,) = emit(receiver.endpoint())
    other = requests.Session()
    other.headers.update(client.http.headers)  # the default test tenant's key
    assert other.get(f"{hooks_url}/v1/jobs/{job_id}/webhook-deliveries").status_code == 404
    response = other.post(f"{hooks_url}/v1/webhook-deliveries/{delivery_id}/redeliver")
    assert response.status_code == 404 and response.json()["error"]["type"] == "NotFoundError"
    assert api("POST", f"/v1/webhook-deliveries/{uuid.uuid4()}/redeliver").status_code == 404
    assert api("GET", "/v1/jobs/not-a-uuid/webhook-deliveries").status_code == 404


SSRF_URLS = [
    "http://10.0.0.5/hook", "http://192.168.1.10/hook", "http://127.0.0.1:9/hook", "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/", "http://localhost/hook",
    "ftp://hooks.example.com/hook",
]


@pytest.mark.parametrize("url", SSRF_URLS)
def test_callbacks_into_private_networks_are_refused_at_submit(url, poolq, tenant):
    no_allowlist = SimpleNamespace(webhooks=webhook_settings({}))  # the operator allowed nothing
    with poolq.session_factory() as session, pytest.raises(APIError) as refused:
        validate_subscription(url, None, no_allowlist, session=session, tenant_id=tenant.id)
    assert refused.value.status == 400 and refused.value.param == "webhook"
    assert "not allowed" in refused.value.message


def test_subscriptions_default_to_completed_and_refuse_unknown_events(poolq, tenant, receiver):
    url = receiver.endpoint()
    with poolq.session_factory() as session:
        assert validate_subscription(url, None, poolq.settings, session=session, tenant_id=tenant.id) == (
            url, ["completed"])
        assert validate_subscription(None, None, poolq.settings, session=session, tenant_id=tenant.id) == (
            None, None)
        for events in (["finished"], [], "completed"):
            with pytest.raises(APIError) as refused:
                validate_subscription(url, events, poolq.settings, session=session, tenant_id=tenant.id)
            assert refused.value.param == "webhook_events_filter"


# -- end to end, through the deployment's API and worker ---------------------------------------------------------

@pytest.fixture
def integrated(client, deployment_env):
    if client.get("/v1/webhooks/secret").status_code == 404:
        pytest.skip("the webhooks blueprint is not registered in create_app yet")
    if "POOLQ_WEBHOOK_ALLOWLIST" not in deployment_env:
        pytest.skip("the deployment's worker does not allow 127.0.0.1 callbacks (POOLQ_WEBHOOK_ALLOWLIST)")


def test_a_submitted_job_calls_its_webhook_when_started_and_completed(integrated, client, receiver, worker_process):
    url = receiver.endpoint()
    response = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": ["great"],
                                             "webhook": url, "webhook_events_filter": ["started", "completed"]})
    assert response.status_code == 202, response.text
    job = client.wait_job(response.json()["id"])
    requests_ = receiver.wait(url, 2, timeout=30)
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    payloads = {p["type"]: p for p in (Webhook(secret).verify(r.body, r.headers) for r in requests_)}
    assert payloads["job.started"]["status"] == "running"
    assert payloads["job.completed"] == {"type": "job.completed", **job}
    listed = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries").json()["data"]
    assert sorted(d["event"] for d in listed) == ["job.completed", "job.started"]


@pytest.mark.parametrize("url", ["http://10.0.0.5/hook", "http://169.254.169.254/latest/", "gopher://example.com/"])
def test_a_submit_with_a_private_webhook_is_a_400(integrated, client, url):
    response = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": ["x"], "webhook": url})
    assert response.status_code == 400 and response.json()["error"]["param"] == "webhook"
