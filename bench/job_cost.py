"""CPU per one-text job, step by step, in one process (target 4's cost model).

bench/system.py measures small jobs end to end with many clients, where a
noisy 2-core machine blurs a change of a millisecond. This times each step
of the path alone, sequentially, with CPU time (time.process_time, all of
this process's threads), against real Postgres and Redis:

  api     POST /v1/jobs through Flask's test client (parse, validate,
          INSERT + COMMIT, the Celery send), no HTTP server;
  worker  the worker's scheduler on N one-text jobs (claim, tokenize, engine,
          vLLM's response shape, the final write, the completion message and
          the ack; everything but the Celery consumer's hand-over), run
          `alone` (one job at a time) and under `load` (all N at once).

    .venv/bin/python bench/job_cost.py            # tiny model (the target-4 shape), N=300

Env: N (jobs), SHAPE (tiny | minilm), DATABASE_URL (a server; a scratch
database is created and dropped), REDIS_URL (a scratch db; flushed).
"""
from __future__ import annotations

import gc
import json
import os
import pathlib
import secrets
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import psycopg  # noqa: E402
import redis  # noqa: E402

N = int(os.environ.get("N", "300"))
SHAPE = os.environ.get("SHAPE", "tiny")
PG = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
TEXT = "a short text to classify here"


def build_model(path: pathlib.Path) -> pathlib.Path:
    import tiny_models

    if SHAPE == "tiny":
        return tiny_models.build_bert_classifier(path, num_labels=2)
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(tiny_models.tokenizer_dir()))
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, num_labels=2, hidden_size=384,
                                             num_hidden_layers=6, num_attention_heads=12,
                                             intermediate_size=1536)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def per_job_ms(seconds: float) -> float:
    return round(1000 * seconds / N, 3)


def main() -> None:
    name = f"poolq_jobcost_{secrets.token_hex(3)}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        run(f"{PG.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}")
    finally:
        redis.Redis.from_url(REDIS).flushdb()
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str) -> None:
    from app.db.migrate import upgrade

    upgrade(url)
    work = pathlib.Path(tempfile.mkdtemp(prefix="poolq-jobcost-"))
    model = build_model(work / SHAPE)
    os.environ.update(POOLQ_DATABASE_URL=url, POOLQ_BROKER_URL=REDIS, POOLQ_MODELS=f"{SHAPE}={model}",
                      POOLQ_HOME=str(work / "home"), POOLQ_AUTH="off", POOLQ_NAMESPACE=f"jobcost{secrets.token_hex(2)}.")
    from app import create_app
    from app.jobs import services
    from app.tenants.records import DEFAULT_TENANT_ID
    from workers.engines import engine_registry
    from workers.scheduler.held import Delivery
    from workers.scheduler.runtime import Scheduler, worker_identity

    app = create_app()
    poolq = app.extensions["poolq"]
    client = app.test_client()
    body = json.dumps({"task": "classify", "model": SHAPE, "input": [TEXT]})
    for _ in range(20):  # warm-up: first statements compiled and cached, connections opened
        client.post("/v1/jobs", data=body, content_type="application/json")
    start = time.process_time()
    for _ in range(N):
        assert client.post("/v1/jobs", data=body, content_type="application/json").status_code == 202
    api = time.process_time() - start

    model_spec, request = services.parse_job_request(json.loads(body), poolq.served, 1000)
    registry = engine_registry(poolq.settings)
    registry.get(SHAPE).classify([TEXT])
    scheduler = Scheduler(poolq, registry, worker_identity("jobcost"), lease_s=30, max_attempts=3)
    scheduler.start()
    # Warm-up: each scheduler thread's first job pays one-time costs (its own tokenizer copy
    # alone is ~0.2 s of CPU), which are not a job's cost.
    with poolq.session_factory() as session:
        warm = [services.create_job(session, model_spec, request, DEFAULT_TENANT_ID).id for _ in range(20)]
        session.commit()
    acked = Acks(len(warm))
    for job_id in warm:
        scheduler.receive("job", str(job_id), SHAPE, Delivery(acked, str(job_id)))
        acked.wait_for(acked.count + 1)
    # As the worker does once its models are loaded (workers/main.py): what is alive now lives
    # as long as the process. Unfrozen, a full collection (~0.2-0.3 s of CPU on 2 vCPUs, the
    # heap of torch and transformers) landed in a measured phase or not by chance: the `load`
    # phase read 0.35-0.53 or 1.25-1.68 ms a job in alternate runs of one commit.
    gc.collect()
    gc.freeze()
    batches_before = registry.get(SHAPE).batch_stats()["batches"]
    report = {"shape": SHAPE, "n": N, "cpu_ms_per_job": {"api": per_job_ms(api)}}
    # The worker's path, all of it in this process: the scheduler claims, tokenizes, batches,
    # shapes, stores, publishes and acks; only the Celery consumer's share is not here (it
    # hands each message over and acks it). `alone`: one job at a time, each waited for;
    # `load`: all N at once, as a backlog or many clients give it.
    for mode in ("alone", "load"):
        with poolq.session_factory() as session:
            ids = [services.create_job(session, model_spec, request, DEFAULT_TENANT_ID).id for _ in range(N)]
            session.commit()
        acked = Acks(N)
        start, wall = time.process_time(), time.perf_counter()
        for job_id in ids:
            scheduler.receive("job", str(job_id), SHAPE, Delivery(acked, str(job_id)))
            if mode == "alone":
                acked.wait_for(acked.count + 1)
        acked.wait_for(N)
        cpu, wall = time.process_time() - start, time.perf_counter() - wall
        report["cpu_ms_per_job"][f"worker_{mode}"] = per_job_ms(cpu)
        report[f"jobs_per_s_{mode}"] = round(N / wall, 1)
    stats = registry.get(SHAPE).batch_stats()
    report["engine_batches"] = stats["batches"] - batches_before
    scheduler.stop(0)
    registry.close()
    print(json.dumps(report))


class Acks:
    """Stands in for the broker messages: counts acks, which come after the commit that stores the job."""

    def __init__(self, n: int):
        self.count = 0
        self._cond = threading.Condition()

    def ack(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= n, timeout=120):
                raise RuntimeError(f"only {self.count} of {n} jobs were stored")


if __name__ == "__main__":
    main()
