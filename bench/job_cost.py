"""CPU per one-text job, step by step, in one process (target 4's cost model).

bench/system.py measures small jobs end to end with many clients, where a
noisy 2-core machine blurs a change of a millisecond. This times each step
of the path alone, sequentially, with CPU time (time.process_time, all of
this process's threads), against real Postgres and Redis:

  api     POST /v1/jobs through Flask's test client (parse, validate,
          INSERT + COMMIT, the Celery send), no HTTP server;
  claim   the worker's compare-and-set to `running` (one transaction);
  engine  execution.run: the engine on one text and vLLM's response shape;
  finish  the final write: status and result in one transaction;
  publish the completion message a synchronous request waits for.

    .venv/bin/python bench/job_cost.py            # tiny model (the target-4 shape), N=300

Env: N (jobs), SHAPE (tiny | minilm), DATABASE_URL (a server; a scratch
database is created and dropped), REDIS_URL (a scratch db; flushed).
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import sys
import tempfile
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
    from workers import execution
    from workers.engines import engine_registry

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
    with poolq.session_factory() as session:
        ids = [services.create_job(session, model_spec, request, DEFAULT_TENANT_ID).id for _ in range(N)]
        session.commit()
    engine = engine_registry(poolq.settings).get(SHAPE)
    engine.classify([TEXT])
    steps = dict.fromkeys(("claim", "engine", "finish", "publish"), 0.0)
    for job_id in ids:
        t0 = time.process_time()
        with poolq.session_factory() as session:
            claimed = services.claim(session, job_id, "bench")
            session.commit()
        t1 = time.process_time()
        result, tokens = execution.run(engine, claimed, lambda: False)
        t2 = time.process_time()
        with poolq.session_factory() as session:
            services.complete(session, claimed, result, tokens)
            session.commit()
        t3 = time.process_time()
        poolq.events.publish(str(job_id))
        t4 = time.process_time()
        for key, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[key] += seconds
    engine_registry(poolq.settings).close()
    report = {"shape": SHAPE, "n": N, "cpu_ms_per_job": {"api": per_job_ms(api), **{k: per_job_ms(v) for k, v in steps.items()}}}
    report["cpu_ms_per_job"]["worker_total"] = round(sum(report["cpu_ms_per_job"][k] for k in steps), 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
