"""Health, readiness and the served-model listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def test_health(client):
    assert client.get("/health").status_code == 200


def test_ready_checks_database_broker_and_loaded_models(client, worker_process):
    deadline = time.monotonic() + 15  # the worker announces its models just after it says "ready."
    while (response := client.get("/ready")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "models": "ok"}


def test_ready_is_503_when_the_broker_is_down(tmp_path, pg_url):
    from app import create_app
    from app.config import Settings

    settings = Settings.from_env({"POOLQ_HOME": str(tmp_path), "POOLQ_DATABASE_URL": pg_url,
                                  "POOLQ_BROKER_URL": "redis://127.0.0.1:1/0"})
    response = create_app(settings).test_client().get("/ready")
    assert response.status_code == 503
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["broker"].startswith("error")
    assert response.headers["Retry-After"]


def test_models_lists_tasks_and_labels(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    tiny = next(m for m in body["data"] if m["id"] == "tiny")
    assert tiny["object"] == "model"
    assert tiny["task"] == "classify"
    assert tiny["tasks"] == ["classify"]
    assert tiny["labels"] == ["neg", "neu", "pos"]
    assert tiny["max_model_len"] == 128


def test_api_process_never_imports_torch(deployment_env):
    """The web process serves requests without torch (it may not even be installed)."""
    code = (
        "import sys, json\n"
        "from app import create_app\n"
        "app = create_app()\n"
        "c = app.test_client()\n"
        "r = c.post('/v1/jobs', json={'task': 'classify', 'model': 'tiny', 'input': []})\n"
        "print(json.dumps({'status': r.status_code, 'torch': 'torch' in sys.modules,"
        " 'transformers': 'transformers' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **deployment_env, "POOLQ_AUTH": "off"},
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": 400, "torch": False, "transformers": False}
