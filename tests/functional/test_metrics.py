"""Prometheus metrics: the API's /metrics and the worker's own endpoint."""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


@pytest.mark.usefixtures("worker_process")
def test_api_metrics_count_requests_jobs_and_the_backlog(api_url, client):
    before = samples(requests.get(f"{api_url}/metrics", timeout=10).text)
    job = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "metered"}).json()
    client.wait_job(job["id"])
    response = requests.get(f"{api_url}/metrics", timeout=10)  # no key: scrapers are not tenants
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    after = samples(response.text)
    assert value(after, "poolq_jobs_accepted_total", model="tiny", task="classify") == \
        value(before, "poolq_jobs_accepted_total", model="tiny", task="classify") + 1
    assert value(after, "poolq_http_requests_total", route="/v1/jobs", method="POST", status="202") >= 1
    # ids never become label values: one series for every job's GET
    assert not any(job["id"] in str(labels) for _, labels in after)
    assert value(after, "poolq_http_request_seconds_count", route="/v1/jobs/<job_id>") >= 1


def test_metrics_content_type_names_its_charset_once(api_url):
    content_type = requests.get(f"{api_url}/metrics", timeout=10).headers["Content-Type"]
    assert content_type.startswith("text/plain; version=") and content_type.count("charset=utf-8") == 1


def test_backlog_gauge_reports_queued_jobs(deployment_env, api_keys, api_url):
    from app import create_app
    from app.config import Settings

    down = create_app(Settings.from_env({**deployment_env, "POOLQ_BROKER_URL": "redis://127.0.0.1:1/0"}))
    client = down.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_keys['alpha']}"
    job = client.post("/v1/jobs", json={"task": "token_classify", "model": "ner", "input": "stuck"})
    assert job.status_code == 202
    found = samples(requests.get(f"{api_url}/metrics", timeout=10).text)
    assert value(found, "poolq_jobs", status="queued", model="ner") >= 1


@pytest.mark.usefixtures("worker_process")
def test_worker_metrics_count_jobs_and_engine_batches(deployment_env, client):
    job = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": ["a", "b", "c"]}).json()
    client.wait_job(job["id"])
    url = f"http://127.0.0.1:{deployment_env['POOLQ_WORKER_METRICS_PORT']}/metrics"
    deadline = time.monotonic() + 10
    while True:
        found = samples(requests.get(url, timeout=10).text)
        if value(found, "poolq_worker_jobs_total", model="tiny", outcome="succeeded") >= 1 or \
                time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value(found, "poolq_worker_jobs_total", model="tiny", task="classify", outcome="succeeded") >= 1
    assert value(found, "poolq_engine_batches_total", model="tiny") >= 1
    assert value(found, "poolq_engine_padded_tokens_total", model="tiny") >= \
        value(found, "poolq_engine_real_tokens_total", model="tiny") > 0


@pytest.mark.usefixtures("worker_process")
def test_worker_metrics_count_each_tenants_sequences_and_tokens(deployment_env, other_client, db):
    """The fair share's units, by tenant: sequences, and prompt tokens (the policy's unit) as the
    job's own usage counts them."""
    from sqlalchemy import select

    from app.tenants.records import Tenant

    with db() as session:
        tenant = str(session.scalar(select(Tenant.id).where(Tenant.name == "beta")))
    url = f"http://127.0.0.1:{deployment_env['POOLQ_WORKER_METRICS_PORT']}/metrics"

    def counts() -> tuple[float, float]:
        found = samples(requests.get(url, timeout=10).text)
        return (value(found, "poolq_worker_sequences_total", model="tiny", tenant=tenant),
                value(found, "poolq_worker_tokens_total", model="tiny", tenant=tenant))

    before = counts()
    texts = ["one tenant's text", "and another, somewhat longer than the first one", "a third"]
    job = other_client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": texts}).json()
    done = other_client.wait_job(job["id"])
    prompt_tokens = done["result"]["usage"]["prompt_tokens"]
    deadline = time.monotonic() + 10
    while (after := counts())[0] < before[0] + len(texts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert prompt_tokens > len(texts)
    assert (after[0] - before[0], after[1] - before[1]) == (len(texts), prompt_tokens)
