"""API keys and tenant isolation, over HTTP and through `poolq keys`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

pytestmark = pytest.mark.usefixtures("worker_process")


def test_no_key_or_a_bad_key_is_401(api_url, api_keys):
    for headers in ({}, {"Authorization": "Bearer pq_nope_nope"}, {"Authorization": f"Basic {api_keys['alpha']}"},
                    {"Authorization": f"Bearer {api_keys['alpha']}x"}):
        response = requests.post(f"{api_url}/v1/jobs", json={"task": "classify", "input": "x"}, headers=headers,
                                 timeout=10)
        assert response.status_code == 401, headers
        assert response.json()["error"]["type"] == "AuthenticationError"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_probes_need_no_key(api_url):
    assert requests.get(f"{api_url}/health", timeout=10).status_code == 200
    # 503 until a worker has loaded every served model; never 401.
    ready = requests.get(f"{api_url}/ready", timeout=10)
    assert ready.status_code in (200, 503) and ready.json()["checks"]["database"] == "ok"


def test_another_tenants_job_does_not_exist_on_any_route(client, other_client):
    job_id = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "mine"}).json()["id"]
    client.wait_job(job_id)
    assert other_client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert other_client.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert other_client.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert job_id not in [j["id"] for j in other_client.get("/v1/jobs", params={"limit": 1000}).json()["data"]]
    assert job_id in [j["id"] for j in client.get("/v1/jobs", params={"limit": 1000}).json()["data"]]
    # a deferred vLLM request is the caller's job too
    deferred = other_client.post("/classify", json={"model": "tiny", "input": "theirs"},
                                 headers={"Prefer": "respond-async"})
    assert client.get(deferred.headers["Location"]).status_code == 404
    assert other_client.get(deferred.headers["Location"]).status_code == 200


def poolq(env: dict, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "app.cli", "--log-level", "WARNING", *args], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_keys_cli_create_list_revoke(deployment_env, api_url):
    created = poolq(deployment_env, "keys", "create", "--tenant", "gamma", "--name", "ci")
    key = created.strip().splitlines()[-1]
    assert key.startswith("pq_")
    listed = poolq(deployment_env, "keys", "list", "--tenant", "gamma")
    assert "tenant=gamma" in listed and "name=ci" in listed and "active" in listed
    assert key not in listed  # only the prefix is ever shown again
    headers = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{api_url}/v1/jobs", headers=headers, timeout=10).status_code == 200
    prefix = key.split("_")[1]
    poolq(deployment_env, "keys", "revoke", prefix)
    assert requests.get(f"{api_url}/v1/jobs", headers=headers, timeout=10).status_code == 401
    assert "revoked" in poolq(deployment_env, "keys", "list", "--tenant", "gamma")


def test_tenant_queue_limit_is_429_with_retry_after(deployment_env):
    """A tenant with max 1 queued job: a broker that refuses keeps its first job queued."""
    from app import create_app
    from app.config import Settings
    from app.db import make_engine, make_session_factory
    from app.tenants.services import create_key

    db = make_engine(deployment_env["POOLQ_DATABASE_URL"])
    with make_session_factory(db)() as session:
        key = create_key(session, "delta", max_queued_jobs=1).key
        session.commit()
    db.dispose()
    app = create_app(Settings.from_env({**deployment_env, "POOLQ_BROKER_URL": "redis://127.0.0.1:1/0"}))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    body = {"task": "classify", "model": "tiny", "input": "x"}
    assert client.post("/v1/jobs", json=body).status_code == 202
    limited = create_app(app.extensions["poolq"].settings).test_client()  # fresh admission cache
    limited.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    response = limited.post("/v1/jobs", json=body)
    assert response.status_code == 429 and response.headers["Retry-After"]
    assert response.json["error"]["type"] == "TooManyRequests"
