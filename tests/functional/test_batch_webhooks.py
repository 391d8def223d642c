"""A batch's final state reaches its webhook: a real receiver, signatures verified with `standardwebhooks`.

Batches run on the deployment's worker (which also consumes the webhooks
queue). The expired and cancelled cases validate the batch in this process
with no chunk sent, so the test, not a race with the worker, decides how it ends.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update
from standardwebhooks import Webhook

from app import create_app
from app.batches import services
from app.batches.dispatch import EXPIRE_BATCHES
from app.batches.records import Batch
from app.tenants.records import Tenant
from tests_support import validate_whole

FINAL = ("completed", "failed", "expired", "cancelled")


class Receiver:
    """Answers 200 to every POST and keeps what came, per path."""

    def __init__(self):
        self.received: dict[str, list[tuple[dict[str, str], str]]] = {}
        self.changed = threading.Condition()
        self.count = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                self.send_response(200)
                self.end_headers()
                with receiver.changed:
                    receiver.received.setdefault(self.path, []).append(
                        ({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.changed.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def endpoint(self) -> str:
        self.count += 1
        return f"http://127.0.0.1:{self.server.server_port}/batch-hooks/{self.count}"

    def wait(self, url: str, count: int = 1, timeout: float = 20) -> list[tuple[dict[str, str], str]]:
        path = url.split(str(self.server.server_port), 1)[1]
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.received.get(path, [])) < count:
                if not self.changed.wait(deadline - time.monotonic()):
                    raise AssertionError(f"{path}: {len(self.received.get(path, []))} of {count} after {timeout} s")
            return list(self.received[path])

    def got(self, url: str) -> list:
        return self.received.get(url.split(str(self.server.server_port), 1)[1], [])


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def poolq(settings):
    return create_app(settings).extensions["poolq"]


def lines(n: int) -> list[dict]:
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/classify", "body": {"model": "tiny", "input": f"t {i}"}}
            for i in range(n)]


def upload(client, content: bytes) -> str:
    response = client.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def jsonl(rows) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def create(client, content: bytes, **extra) -> dict:
    response = client.post("/v1/batches", json={"input_file_id": upload(client, content), "endpoint": "/classify",
                                                **extra})
    assert response.status_code == 200, response.text
    return response.json()


def verified(client, receiver, url: str) -> dict:
    (headers, body), = receiver.wait(url)
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    return Webhook(secret).verify(body, headers)


def settled_deliveries(client, batch_id: str, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/batches/{batch_id}/webhook-deliveries")
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        if data and all(d["status"] != "pending" for d in data):
            return data
        time.sleep(0.05)
    raise AssertionError(f"deliveries of {batch_id} still pending: {data}")


def in_process_batch(db, client, poolq, url: str, n: int = 8) -> str:
    """Created and validated here, with no chunk message out: nothing runs until the test says so."""
    file_id = upload(client, jsonl(lines(n)))
    with db() as session:
        tenant = session.scalar(select(Tenant.id).where(Tenant.name == "alpha"))
        batch = services.create_batch(session, tenant, {"input_file_id": file_id, "endpoint": "/classify",
                                                        "webhook": url}, poolq.settings)
        validate_whole(session, batch.id, poolq.served, 1000, 4, window=0)
        session.commit()
    return batch.id


def test_a_completed_batch_calls_its_webhook_with_the_batch_object(client, receiver, worker_process):
    url = receiver.endpoint()
    batch = create(client, jsonl(lines(20)), webhook=url, metadata={"run": "hooked"})
    assert batch["webhook"] == url and batch["webhook_events_filter"] == list(FINAL)
    done = client.wait_batch(batch["id"])
    payload = verified(client, receiver, url)
    assert done["status"] == "completed"
    assert payload == {"type": "batch.completed", **client.get(f"/v1/batches/{batch['id']}").json()}
    (delivery,) = settled_deliveries(client, batch["id"])
    assert delivery["event"] == "batch.completed" and delivery["status"] == "succeeded"
    assert delivery["batch_id"] == batch["id"] and delivery["job_id"] is None
    assert delivery["attempts"][0]["status_code"] == 200


def test_a_batch_that_fails_validation_sends_batch_failed(client, receiver, worker_process):
    url = receiver.endpoint()
    batch = create(client, jsonl([{"custom_id": "x"}]), webhook=url, webhook_events_filter=["failed"])
    payload = verified(client, receiver, url)
    assert payload["type"] == "batch.failed" and payload["id"] == batch["id"]
    assert payload["errors"]["data"][0]["code"] == "invalid_file"


def test_events_outside_the_filter_are_not_sent(client, receiver, worker_process):
    url = receiver.endpoint()
    batch = create(client, jsonl(lines(3)), webhook=url, webhook_events_filter=["failed", "expired"])
    assert client.wait_batch(batch["id"])["status"] == "completed"
    time.sleep(0.5)
    assert receiver.got(url) == []
    assert client.get(f"/v1/batches/{batch['id']}/webhook-deliveries").json()["data"] == []


def test_a_cancelled_batch_sends_batch_cancelled(client, receiver, db, poolq, worker_process):
    url = receiver.endpoint()
    batch_id = in_process_batch(db, client, poolq, url)
    assert client.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
    payload = verified(client, receiver, url)
    assert payload["type"] == "batch.cancelled" and payload["status"] == "cancelled" and payload["cancelled_at"]
    assert [d["event"] for d in settled_deliveries(client, batch_id)] == ["batch.cancelled"]


def test_an_expired_batch_sends_batch_expired(client, receiver, db, poolq, worker_process):
    url = receiver.endpoint()
    batch_id = in_process_batch(db, client, poolq, url)
    with db() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(expires_at=Batch.created_at))
        session.commit()
    poolq.celery.send_task(EXPIRE_BATCHES, queue=poolq.settings.maintenance_queue)  # as beat does
    payload = verified(client, receiver, url)
    assert payload["type"] == "batch.expired" and payload["expired_at"]
    poolq.celery.send_task(EXPIRE_BATCHES, queue=poolq.settings.maintenance_queue)  # a batch ends once
    time.sleep(0.5)
    assert len(receiver.got(url)) == 1


@pytest.mark.parametrize("extra, param", [
    ({"webhook": "http://10.0.0.5/hook"}, "webhook"),
    ({"webhook": "http://169.254.169.254/latest/"}, "webhook"),
    ({"webhook": 5}, "webhook"),
    ({"webhook_events_filter": ["completed"]}, "webhook_events_filter"),  # no URL
    ({"webhook": "http://127.0.0.1:9/x", "webhook_events_filter": ["started"]}, "webhook_events_filter"),
    ({"webhook": "http://127.0.0.1:9/x", "webhook_events_filter": []}, "webhook_events_filter"),
])
def test_a_bad_subscription_is_a_400(client, receiver, extra, param):
    response = client.post("/v1/batches", json={"input_file_id": upload(client, jsonl(lines(1))),
                                                "endpoint": "/classify", **extra})
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_another_tenants_batch_deliveries_are_not_found(client, other_client, receiver, worker_process):
    batch = create(client, jsonl(lines(1)))
    assert other_client.get(f"/v1/batches/{batch['id']}/webhook-deliveries").status_code == 404
    assert client.get("/v1/batches/batch_nope/webhook-deliveries").status_code == 404
    client.wait_batch(batch["id"])
