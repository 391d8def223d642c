"""A classify job goes API -> Redis -> worker process -> Postgres -> poll."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time
import uuid
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, select
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.jobs.records import Job, JobResult

TEXTS = ["the movie was wonderful", "a dull and tedious evening", "ok", "x " * 40]


@pytest.fixture(scope="module")
def reference(served_models):
    """transformers' own forward pass on the same checkpoint, fp32."""
    path = served_models["tiny"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def logits(texts: list[str]) -> torch.Tensor:
        rows = []
        with torch.inference_mode():
            for text in texts:  # one at a time: no padding in the reference
                enc = tokenizer(text, return_tensors="pt")
                rows.append(model(**enc).logits[0])
        return torch.stack(rows)

    return logits


def submit(client, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    uuid.UUID(job["id"])
    assert job["status"] == "queued"
    return job


def test_classify_job_matches_transformers(client, worker_process, reference):
    job = submit(client, {"task": "classify", "model": "tiny", "input": TEXTS})
    done = client.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    result = done["result"]
    assert result["object"] == "list" and result["model"] == "tiny"
    assert result["id"].startswith("classify-")
    expected = reference(TEXTS).softmax(-1)
    labels = ["neg", "neu", "pos"]
    for i, item in enumerate(result["data"]):
        assert item["index"] == i and item["num_classes"] == 3
        assert torch.allclose(torch.tensor(item["probs"]), expected[i], atol=1e-4)
        assert item["label"] == labels[int(expected[i].argmax())]
    assert result["usage"]["prompt_tokens"] == result["usage"]["total_tokens"] > 0
    assert done["usage"]["prompt_tokens"] == result["usage"]["prompt_tokens"]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_a_large_job_is_tokenized_by_the_workers_helper_processes(client, worker_process, reference):
    rng = random.Random(3)
    words = ["alpha", "Beta", "gamma,", "river", "stone!", "quickly", "under", "Berlin"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(700)]  # 3 chunks
    done = client.wait_job(submit(client, {"task": "classify", "model": "tiny", "input": texts})["id"])
    assert done["status"] == "succeeded", done
    expected = reference(texts).softmax(-1)
    got = torch.tensor([item["probs"] for item in done["result"]["data"]])
    assert torch.allclose(got, expected, atol=1e-4)
    assert len(_children(worker_process.pid)) >= 2  # POOLQ_TOKENIZER_PROCESSES=2 in the deployment


def test_use_activation_false_returns_raw_logits(client, worker_process, reference):
    job = submit(client, {"task": "classify", "model": "tiny", "input": TEXTS[0], "use_activation": False})
    done = client.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    assert torch.allclose(torch.tensor(done["result"]["data"][0]["probs"]), reference(TEXTS[:1])[0], atol=1e-4)


def test_request_id_names_the_response(client, worker_process):
    job = submit(client, {"task": "classify", "model": "tiny", "input": "hi", "request_id": "abc123"})
    assert client.wait_job(job["id"])["result"]["id"] == "classify-abc123"


def test_over_length_input_fails_the_job_with_vllms_message(client, worker_process):
    job = submit(client, {"task": "classify", "model": "tiny", "input": "word " * 500})
    done = client.wait_job(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == 400 and done["error"]["type"] == "BadRequestError"
    assert "Please reduce the length of the input prompt" in done["error"]["message"]
    assert done["result"] is None


def test_over_length_input_late_in_a_big_job_fails_it_whole(client, worker_process):
    """A big job's units are tokenized while its first ones run; a bad input in a later chunk
    still fails the whole job with vLLM's message, and no partial result is kept."""
    texts = ["short text"] * 650 + ["word " * 500] + ["short text"] * 10
    done = client.wait_job(submit(client, {"task": "classify", "model": "tiny", "input": texts})["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == 400 and "Please reduce the length of the input prompt" in done["error"]["message"]
    assert done["result"] is None


def test_truncation_makes_over_length_input_fit(client, worker_process):
    job = submit(client, {"task": "classify", "model": "tiny", "input": "word " * 500, "truncate_prompt_tokens": -1})
    done = client.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["usage"]["prompt_tokens"] == 128


def test_many_concurrent_jobs_all_complete(client, worker_process, reference):
    texts = [f"sample number {i} " * (1 + i % 7) for i in range(40)]
    with cf.ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda t: submit(client, {"task": "classify", "model": "tiny", "input": t}), texts))
    expected = reference(texts).softmax(-1)
    for i, job in enumerate(jobs):
        done = client.wait_job(job["id"])
        assert done["status"] == "succeeded", done
        assert torch.allclose(torch.tensor(done["result"]["data"][0]["probs"]), expected[i], atol=1e-4)


def test_result_and_status_are_persisted_together(client, worker_process, pg_url):
    job = submit(client, {"task": "classify", "model": "tiny", "input": ["a", "b"]})
    client.wait_job(job["id"])
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        row = conn.execute(select(Job.status, Job.attempts).where(Job.id == uuid.UUID(job["id"]))).one()
        body = conn.scalar(select(JobResult.body).where(JobResult.job_id == uuid.UUID(job["id"])))
    engine.dispose()
    assert row.status == "succeeded" and row.attempts == 1
    assert len(body["data"]) == 2


def test_redelivered_task_for_a_finished_job_changes_nothing(client, worker_process, settings):
    """At-least-once delivery, exactly-once effect: a duplicate message is a no-op."""
    from app import create_app
    from app.jobs.dispatch import RUN_JOB

    job = submit(client, {"task": "classify", "model": "tiny", "input": "once"})
    first = client.wait_job(job["id"])
    celery = create_app(settings).extensions["celery"]
    celery.send_task(RUN_JOB, args=[job["id"]], kwargs={"model": "tiny", "task": "classify"}, queue=settings.queue_for("tiny"))
    # a later job on the same queue completes after the duplicate was consumed
    client.wait_job(submit(client, {"task": "classify", "model": "tiny", "input": "after"})["id"])
    time.sleep(1.0)  # the duplicate may run on another thread than "after"
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert again == first
