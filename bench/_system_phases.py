"""The issue-11 phases of bench/system.py: head-of-line blocking, two tenants, re-sends in a
no-fault run, kill -9 recovery, the engine's batch counters and a plain forward loop.

Only the public surface is used, so the same phases run against any version of the worker:
the HTTP API, the `poolq` CLI (api, worker, beat, keys create), the jobs rows (id, tenant_id,
status, attempts, worker, created_at, started_at, finished_at), the worker's Prometheus
endpoint (POOLQ_WORKER_METRICS_PORT), its log, and process signals. Nothing here imports the
worker's or the API's modules.

Each phase takes `ctx`, a namespace system.py builds: port (the API, auth off), env (the
stack's environment), logdir, dbc (autocommit psycopg connection), meter (CpuMeter), Proc,
wait_ready, free_port, lat_summary, loadavg, log, texts, big_texts, cleanup (teardown list),
procs (name -> Proc of extra processes started here), root.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import statistics
import threading
import time
import urllib.request

FINISHED = ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------- HTTP
class Http:
    """One keep-alive connection to 127.0.0.1, optionally with a tenant's key."""

    def __init__(self, port: int, key: str | None = None, timeout: float = 600):
        self.port, self.key, self.timeout, self.c = port, key, timeout, None

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        for attempt in range(2):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.c.request(method, path, body=data, headers=headers)
                r = self.c.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else {})
            except (http.client.HTTPException, OSError):
                if self.c is not None:
                    self.c.close()
                self.c = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.c is not None:
            self.c.close()


def wait_job(h: Http, job_id: str, deadline: float, poll: float = 0.02) -> dict:
    while True:
        status, job = h.request("GET", f"/v1/jobs/{job_id}")
        if status != 200:
            raise RuntimeError(f"GET job {status}: {str(job)[:300]}")
        if job["status"] in FINISHED or time.monotonic() > deadline:
            return job
        time.sleep(poll)


def probe(port: int, model: str, texts: list[str], key: str | None = None, n: int | None = None,
          stop: threading.Event | None = None, offset: int = 0, cap_s: float = 600) -> list[tuple[float, float, int]]:
    """Sequential one-text requests on the synchronous route POST /classify, `n` of them or until
    `stop` is set. A 202 (the route's own wait timed out) is polled to the end, and the whole
    wait counts. Returns (epoch start, seconds, HTTP status of the first answer) per request."""
    h = Http(port, key)
    out: list[tuple[float, float, int]] = []
    i = 0
    try:
        while (n is None or i < n) and not (stop is not None and stop.is_set()):
            t_wall, t = time.time(), time.perf_counter()
            status = probe_once(h, model, texts[(offset + i) % len(texts)], cap_s)
            out.append((t_wall, time.perf_counter() - t, status))
            i += 1
    finally:
        h.close()
    return out


def probe_once(h, model: str, text: str, cap_s: float) -> int:
    """One one-text POST /classify, a 202 polled to the end; its status, or an error."""
    status, body = h.request("POST", "/classify", {"model": model, "input": text})
    if status == 202:
        job = wait_job(h, body["id"], time.monotonic() + cap_s)
        if job["status"] != "succeeded":
            raise RuntimeError(f"probe job {job['status']}: {job.get('error')}")
    elif status != 200:
        raise RuntimeError(f"/classify {status}: {str(body)[:300]}")
    return status


def probe_open(port: int, model: str, texts: list[str], stop: threading.Event, interval: float,
               key: str | None = None, offset: int = 0, pool: int = 16,
               cap_s: float = 600) -> list[tuple[float, float, int]]:
    """Open-loop one-text requests on POST /classify: one arrives every `interval` seconds until `stop`,
    served by `pool` keep-alive connections; latency runs from the arrival, so a request that waits for a
    free connection counts that wait (no coordinated omission), and every moment of the window is
    sampled alike (a closed loop samples the fast moments more often). A 202 is polled to the end."""
    import queue

    arrivals: queue.Queue = queue.Queue()
    out: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def serve() -> None:
        h = Http(port, key)
        try:
            while True:
                item = arrivals.get()
                if item is None:
                    return
                i, t_wall, t = item
                try:
                    status = probe_once(h, model, texts[(offset + i) % len(texts)], cap_s)
                    with lock:
                        out.append((t_wall, time.perf_counter() - t, status))
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            h.close()

    ts = [threading.Thread(target=serve, daemon=True) for _ in range(pool)]
    for t in ts:
        t.start()
    i, t_next = 0, time.perf_counter()
    while not stop.is_set():
        arrivals.put((i, time.time(), time.perf_counter()))
        i += 1
        t_next += interval
        stop.wait(max(0.0, t_next - time.perf_counter()))
    for _ in ts:
        arrivals.put(None)
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} probe error(s), first: {errors[0]}")
    return sorted(out)


def submit_jobs(port: int, bodies: list[dict | bytes], key: str | None = None, threads: int = 8) -> list[str]:
    """POST /v1/jobs for each body from `threads` connections; job ids in the bodies' order."""
    ids: list[str | None] = [None] * len(bodies)
    errors: list[str] = []
    nxt = iter(range(len(bodies)))
    lock = threading.Lock()

    def run() -> None:
        h = Http(port, key)
        try:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None or errors:
                    return
                status, job = h.request("POST", "/v1/jobs", bodies[i])
                if status != 202:
                    errors.append(f"POST /v1/jobs {status}: {str(job)[:300]}")
                    return
                ids[i] = job["id"]
        finally:
            h.close()

    ts = [threading.Thread(target=run, daemon=True) for _ in range(max(1, min(threads, len(bodies))))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return ids  # type: ignore[return-value]


def job_body(model: str, texts: list[str]) -> bytes:
    return json.dumps({"task": "classify", "model": model, "input": texts}).encode()


# ---------------------------------------------------------------- rows
def job_rows(dbc, ids: list[str]) -> list[dict]:
    rows = dbc.execute(
        """SELECT id::text, tenant_id::text, status, attempts, worker, extract(epoch FROM created_at),
                  extract(epoch FROM started_at), extract(epoch FROM finished_at)
           FROM jobs WHERE id = ANY(%s::uuid[])""", (ids,)).fetchall()
    keys = ("id", "tenant_id", "status", "attempts", "worker", "created_at", "started_at", "finished_at")
    return [{k: (float(v) if k.endswith("_at") and v is not None else v) for k, v in zip(keys, r)} for r in rows]


def running_elsewhere(dbc, since: float, workers: set[str]) -> bool:
    """Whether a job created since `since` is running on a worker not in `workers`."""
    return bool(dbc.execute(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'running' AND created_at >= to_timestamp(%s) "
        "AND worker IS NOT NULL AND NOT (worker = ANY(%s)))", (since, sorted(workers))).fetchone()[0])


def unfinished(dbc, ids: list[str]) -> int:
    return int(dbc.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status NOT IN "
                           "('succeeded', 'failed', 'cancelled')", (ids,)).fetchone()[0])


def wait_all(dbc, ids: list[str], deadline: float, poll: float = 0.05) -> bool:
    while time.monotonic() < deadline:
        if unfinished(dbc, ids) == 0:
            return True
        time.sleep(poll)
    return unfinished(dbc, ids) == 0


def statuses(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


# ---------------------------------------------------------------- processes and logs
def ensure_beat(ctx) -> dict:
    """`poolq beat`, as production runs it (exactly one); started once, kept to the end."""
    if "beat" in ctx.procs:
        return ctx.beat_info
    beat = ctx.Proc("beat", [sys.executable, "-m", "app.cli", "beat"], ctx.env, ctx.logdir)
    ctx.cleanup.append(beat.stop)
    ctx.procs["beat"] = beat
    ctx.meter.groups["beat"] = beat.pgid
    time.sleep(3)
    alive = beat.p.poll() is None
    ctx.beat_info = {"started": alive, "started_at": time.time(),
                     "note": None if alive else f"beat exited rc {beat.p.returncode}: {beat.tail(400)}"}
    if not alive:
        ctx.log(f"# poolq beat exited: {beat.tail(400)}")
    return ctx.beat_info


def log_offsets(ctx) -> dict[str, int]:
    out = {}
    for path in ctx.logdir.glob("*.log"):
        try:
            out[path.name] = path.stat().st_size
        except OSError:
            pass
    return out


def log_since(ctx, offsets: dict[str, int], names: tuple[str, ...] = ("worker", "worker2", "beat")) -> str:
    text = []
    for name in names:
        path = ctx.logdir / f"{name}.log"
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offsets.get(path.name, 0))
                text.append(f.read().decode("utf-8", "replace"))
    return "\n".join(text)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill9(proc) -> int:
    """SIGKILL a process, its process group and every descendant (tokenizer helpers included)."""
    pids = descendants(proc.p.pid)
    try:
        os.killpg(proc.pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.p.wait(timeout=30)
    return len(pids) + 1


def engine_counters(port: int | None) -> dict[str, dict[str, float]] | None:
    """poolq_engine_batches / poolq_engine_sequences by model, from the worker's /metrics."""
    if not port:
        return None
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    out: dict[str, dict[str, float]] = {}
    pat = re.compile(r'^poolq_engine_(batches|sequences|real_tokens|padded_tokens)(?:_total)?\{([^}]*)\}\s+(\S+)')
    for line in text.splitlines():
        m = pat.match(line)
        if not m:
            continue
        model = re.search(r'model="([^"]*)"', m.group(2))
        name = model.group(1) if model else ""
        out.setdefault(name, {})
        out[name][m.group(1)] = out[name].get(m.group(1), 0.0) + float(m.group(3))
    return out


def tenant_sequences(port: int | None) -> dict[str, float] | None:
    """poolq_worker_sequences_total by tenant (summed over models); None where the worker has no such metric."""
    return tenant_counts(port)[0]


def tenant_counts(port: int | None) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    """One scrape's poolq_worker_sequences_total and poolq_worker_tokens_total by tenant (summed
    over models); None for a metric the worker does not have (the tokens' came with run 26)."""
    if not port:
        return None, None
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None, None
    return _by_tenant(text, "sequences"), _by_tenant(text, "tokens")


def _by_tenant(text: str, unit: str) -> dict[str, float] | None:
    out: dict[str, float] = {}
    for m in re.finditer(rf'^poolq_worker_{unit}_total\{{([^}}]*)\}}\s+(\S+)', text, re.M):
        tenant = re.search(r'tenant="([^"]*)"', m.group(1))
        key = tenant.group(1) if tenant else ""
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out or None


def tenant_counts_at_half(port: int | None, before: tuple, per_tenant: int,
                          cap_s: float = 600) -> tuple[dict | None, dict | None]:
    """Texts and tokens each tenant had run (by tenant id) since `before` (tenant_counts) when the
    two busiest, together, had run half of both backlogs (2 x per_tenant texts). Nones without the
    worker metric (older workers)."""
    texts_before, tokens_before = before
    if texts_before is None:
        return None, None
    deadline = time.monotonic() + cap_s
    while time.monotonic() < deadline:
        texts, tokens = tenant_counts(port)
        delta = _since(texts or {}, texts_before)
        if sum(sorted(delta.values(), reverse=True)[:2]) >= per_tenant:
            return delta, (_since(tokens, tokens_before) if tokens and tokens_before else None)
        time.sleep(0.05)
    return None, None


def tenant_texts_since(port: int | None, before: dict | None) -> dict | None:
    """Texts each tenant (by id) ran since `before`."""
    now = tenant_sequences(port) if before is not None else None
    return None if now is None else _since(now, before)


def _since(now: dict, before: dict) -> dict[str, int]:
    return {k: int(now.get(k, 0.0) - before.get(k, 0.0)) for k in now}


def a_then_b(by_tenant: dict | None, rows: list[dict], ids_a: list[str]) -> list[int] | None:
    """Counts by tenant id (texts or tokens) as [A's, B's], A's tenant read off its jobs' rows:
    sorted by size, the two figures did not say which tenant ran more."""
    if by_tenant is None:
        return None
    set_a = set(ids_a)
    tenant_a = next((r["tenant_id"] for r in rows if r["id"] in set_a), None)
    tenant_b = next((r["tenant_id"] for r in rows if r["id"] not in set_a), None)
    return [by_tenant.get(tenant_a, 0), by_tenant.get(tenant_b, 0)]


def counters_delta(before, after, model: str) -> dict | None:
    if before is None or after is None or model not in after:
        return None
    b, a = before.get(model, {}), after[model]
    d = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in ("batches", "sequences", "real_tokens", "padded_tokens")}
    d["sequences_per_batch"] = round(d["sequences"] / d["batches"], 2) if d["batches"] else None
    d["padded_per_real_token"] = round(d["padded_tokens"] / d["real_tokens"], 3) if d["real_tokens"] else None
    return d


# ---------------------------------------------------------------- plain loop (engine phase)
def plain_loop_vs_engine(engine, model_dir, texts: list[str], n: int, device, dtype, gpu: bool) -> dict:
    """One text at a time: the HF tokenizer, the model's forward, softmax, to a Python list, on the
    same model, device and dtype as the engine, interleaved with engine.classify([text]) so both
    see the same machine load."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).to(device=device, dtype=dtype).eval()

    def plain(text: str) -> list[float]:
        enc = tok(text, return_tensors="pt", truncation=True, max_length=512).to(device)
        with torch.inference_mode():
            return model(**enc).logits.float().softmax(-1)[0].tolist()

    for i in range(20):  # warm-up of both
        plain(texts[i])
        engine.classify([texts[i]])
    eng, pl = [], []
    for i in range(n):
        text = texts[i]
        t = time.perf_counter()
        engine.classify([text])
        eng.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain(text)
        if gpu:
            torch.cuda.synchronize()
        pl.append(time.perf_counter() - t)
    del model
    return {"engine": eng, "plain": pl, "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------- phase: head-of-line blocking
def hol(ctx, a, model: str) -> dict:
    """One-text sync p50 while a big job and a JSONL batch run, against its idle p50 (same API)."""
    import requests

    t_idle = time.time()
    idle = probe(ctx.port, model, ctx.texts, n=a.hol_idle_n, offset=31)
    idle_stages = probe_stages(ctx, model, t_idle, time.time(), exclude_tokens_over=1000)
    idle_lat = [x[1] for x in idle]
    job_n, batch_n = a.hol_job_n, a.hol_batch_n
    big = [ctx.big_texts[i % len(ctx.big_texts)] for i in range(job_n)]
    lines = "".join(json.dumps({"custom_id": f"hol-{i}", "method": "POST", "url": "/classify",
                                "body": {"model": model, "input": ctx.texts[i % len(ctx.texts)]}}) + "\n"
                    for i in range(batch_n))
    base = f"http://127.0.0.1:{ctx.port}"
    done: dict[str, float] = {}
    info: dict = {}
    accepted = threading.Barrier(3)
    errors: list[str] = []
    before = ctx.meter.snapshot()

    def run_job() -> None:
        try:
            h = Http(ctx.port)
            t0 = time.time()
            status, job = h.request("POST", "/v1/jobs", job_body(model, big))
            info["job_submit_s"] = round(time.time() - t0, 3)
            if status != 202:
                raise RuntimeError(f"big job {status}: {str(job)[:300]}")
            accepted.wait(60)
            job = wait_job(h, job["id"], time.monotonic() + 1800, poll=0.1)
            done["job"] = time.time()
            info["job_status"], info["job_seconds"] = job["status"], round(done["job"] - t0, 3)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"big job: {type(exc).__name__}: {exc}")
            accepted.abort()

    def run_batch() -> None:
        try:
            t0 = time.time()
            up = requests.post(f"{base}/v1/files", files={"file": ("hol.jsonl", lines.encode())},
                               data={"purpose": "batch"}, timeout=600)
            up.raise_for_status()
            created = requests.post(f"{base}/v1/batches", timeout=60, json={
                "input_file_id": up.json()["id"], "endpoint": "/classify", "completion_window": "24h"})
            created.raise_for_status()
            info["batch_submit_s"] = round(time.time() - t0, 3)
            accepted.wait(60)
            batch = created.json()
            while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.1)
                batch = requests.get(f"{base}/v1/batches/{batch['id']}", timeout=60).json()
            done["batch"] = time.time()
            info["batch_status"], info["batch_seconds"] = batch["status"], round(done["batch"] - t0, 3)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"batch: {type(exc).__name__}: {exc}")
            accepted.abort()

    ts = [threading.Thread(target=run_job, daemon=True), threading.Thread(target=run_batch, daemon=True)]
    for t in ts:
        t.start()
    try:
        accepted.wait(600)
    except threading.BrokenBarrierError:
        raise RuntimeError("hol: " + "; ".join(errors))
    t_accepted = time.time()
    stop = threading.Event()
    samples: list = []

    def prober() -> None:
        try:
            samples.extend(probe_open(ctx.port, model, ctx.texts, stop, a.probe_interval_s, offset=97))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"probe: {type(exc).__name__}: {exc}")

    p = threading.Thread(target=prober, daemon=True)
    p.start()
    for t in ts:
        t.join()
    t_bg_done = max(done.values()) if done else time.time()
    stop.set()
    p.join()
    cpu = ctx.meter.delta(before, ctx.meter.snapshot())
    if errors:
        raise RuntimeError("hol: " + "; ".join(errors))
    during = [lat for t0, lat, _ in samples if t0 < t_bg_done]
    stages = probe_stages(ctx, model, t_accepted, t_bg_done, exclude_tokens_over=1000)
    idle_p50 = ctx.pct(idle_lat, 50)
    during_p50 = ctx.pct(during, 50)
    scaled = job_n != 20000 or batch_n != 5000
    return {"model": model, "job_n": job_n, "batch_n": batch_n,
            "probe": f"idle: {a.hol_idle_n} sequential; during: open loop, one every {a.probe_interval_s:g} s",
            "scaled_down": scaled, "note": ("sizes scaled down from the issue's 20,000-text job and 5,000-line "
                                            "batch (--hol-job-n/--hol-batch-n)") if scaled else None,
            "idle": ctx.lat_summary(idle_lat), "during": ctx.lat_summary(during),
            "during_202_polled": sum(1 for t0, _, s in samples if t0 < t_bg_done and s == 202),
            "ratio_p50_vs_idle": round(during_p50 / idle_p50, 2) if during and idle_p50 else None,
            "background_seconds_after_accept": round(t_bg_done - t_accepted, 3), "idle_stages_p50_ms": idle_stages,
            "during_stages_p50_ms": stages,
            **info, "cpu_s": cpu}


def cancel(ctx, a, model: str) -> dict:
    """A big job cancelled while it runs, --cancel-rounds times: the texts the worker's engine still
    took for it after the cancel's 200 (poolq_engine_sequences, scraped every 10 ms until it has not
    moved for a second) and when the last of them was taken; the job's rate just before the cancel
    turns those texts into seconds of its forwards. Then a one-text job, to show the worker goes on."""
    big = [ctx.big_texts[i % len(ctx.big_texts)] for i in range(a.hol_job_n)]
    h = Http(ctx.port)
    rounds = []
    for _ in range(max(1, a.cancel_rounds)):
        status, job = h.request("POST", "/v1/jobs", job_body(model, big))
        if status != 202:
            raise RuntimeError(f"big job {status}: {str(job)[:300]}")
        deadline = time.monotonic() + 120
        while h.request("GET", f"/v1/jobs/{job['id']}")[1]["status"] != "running":
            if time.monotonic() > deadline:
                raise RuntimeError("the big job never started")
            time.sleep(0.01)
        t_run, seq_run = time.time(), _sequences(ctx.metrics_port, model)
        time.sleep(0.5)  # running at its pace
        t_before, seq_before = time.time(), _sequences(ctx.metrics_port, model)
        status, body = h.request("POST", f"/v1/jobs/{job['id']}/cancel")
        t_ok, seq_ok = time.time(), _sequences(ctx.metrics_port, model)
        if status != 200:
            raise RuntimeError(f"cancel {status}: {str(body)[:300]}")
        last_t, last_seq = t_ok, seq_ok
        while time.time() - last_t < 1.0 and time.time() - t_ok < 60:
            time.sleep(0.01)
            seq = _sequences(ctx.metrics_port, model)
            if seq != last_seq:
                last_t, last_seq = time.time(), seq
        rate = (seq_before - seq_run) / max(t_before - t_run, 1e-9)
        after = last_seq - seq_ok
        rounds.append({"texts_before_cancel": int(seq_ok - seq_run), "texts_after_cancel": int(after),
                       "last_text_after_s": round(last_t - t_ok, 3),
                       "texts_per_s_before": round(rate, 1),
                       "seconds_of_forwards_after": round(after / rate, 3) if rate else None,
                       "status": h.request("GET", f"/v1/jobs/{job['id']}")[1]["status"]})
    status, job = h.request("POST", "/v1/jobs", job_body(model, ["one text after the cancels"]))
    follow_up = wait_job(h, job["id"], time.monotonic() + 60)["status"] if status == 202 else f"submit {status}"
    h.close()
    med = lambda key: statistics.median(r[key] for r in rounds if r[key] is not None)  # noqa: E731
    return {"job_n": a.hol_job_n, "rounds": rounds, "texts_after_cancel_median": med("texts_after_cancel"),
            "last_text_after_s_median": med("last_text_after_s"),
            "seconds_of_forwards_after_median": med("seconds_of_forwards_after"), "follow_up_job": follow_up}


def _sequences(port: int | None, model: str) -> float:
    counters = engine_counters(port) or {}
    return counters.get(model, {}).get("sequences", 0.0)


def probe_stages(ctx, model: str, since: float, until: float, exclude_tokens_over: int) -> dict | None:
    """Where the probes' time went, from their rows (p50 of each stage, ms): the API's insert to the
    worker's claim (the message's way through Redis and admission), and the claim to the result written
    (preparation, the engine, the group write). The rest of a probe's latency is the API's and the
    client's. The big job is left out by its token count; a batch's lines are not jobs."""
    rows = ctx.dbc.execute(
        """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)),
                  count(*)
           FROM jobs WHERE model = %s AND created_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)
             AND coalesce(prompt_tokens, 0) <= %s""", (model, since, until, exclude_tokens_over)).fetchone()
    if not rows or not rows[3]:
        return None
    ms = lambda x: None if x is None else round(float(x) * 1000, 2)  # noqa: E731
    return {"created_to_started": ms(rows[0]), "started_to_finished": ms(rows[1]),
            "created_to_finished": ms(rows[2]), "jobs": int(rows[3])}


# ---------------------------------------------------------------- phase: two tenants
def create_key(ctx, tenant: str) -> str:
    r = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--tenant", tenant, "--name", "bench"],
                       env=ctx.env, cwd=ctx.root, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"poolq keys create failed: {r.stdout[-1000:]}{r.stderr[-1000:]}")
    lines = [x.strip() for x in r.stdout.splitlines() if x.strip()]
    return lines[-1]


def tenants(ctx, a, model: str) -> dict:
    """Tenant A floods with large jobs while tenant B sends one-text sync requests; then both submit
    the same identical jobs (A's first, B's right after) and the jobs finished by each are counted
    at the moment half of all of them have finished."""
    port = ctx.free_port()
    env = {**ctx.env, "POOLQ_AUTH": "required"}
    api = ctx.Proc("api_auth", [sys.executable, "-m", "app.cli", "api", "--port", str(port), "--workers",
                                str(a.api_workers), "--threads", str(a.api_threads)], env, ctx.logdir)
    ctx.cleanup.append(api.stop)
    ctx.meter.groups["api_auth"] = api.pgid
    try:
        ctx.wait_ready(port, api, 60)
        key_a, key_b = create_key(ctx, "bench-tenant-a"), create_key(ctx, "bench-tenant-b")
        probe(port, model, ctx.texts, key=key_a, n=5)  # warm-up: both keys, connections
        probe(port, model, ctx.texts, key=key_b, n=5)
        res: dict = {"model": model, "api": "a second `poolq api` with POOLQ_AUTH=required on the same database"}

        # 1. A floods, B is interactive
        idle = [x[1] for x in probe(port, model, ctx.texts, key=key_b, n=a.tenant_idle_n, offset=41)]
        flood_texts = [ctx.big_texts[i % len(ctx.big_texts)] for i in range(a.tenant_flood_n)]
        body = job_body(model, flood_texts)
        t0 = time.time()
        ids_a = submit_jobs(port, [body] * a.tenant_flood_jobs, key=key_a, threads=4)
        t_sub = time.time()
        stop = threading.Event()
        samples: list = []
        errors: list[str] = []

        def prober() -> None:
            try:
                samples.extend(probe_open(port, model, ctx.texts, stop, a.probe_interval_s, key=key_b, offset=53))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"probe: {type(exc).__name__}: {exc}")

        p = threading.Thread(target=prober, daemon=True)
        p.start()
        ok = wait_all(ctx.dbc, ids_a, time.monotonic() + a.tenant_cap_s, poll=0.1)
        t_a_done = time.time()
        stop.set()
        p.join()
        if errors:
            raise RuntimeError(errors[0])
        during = [lat for ts, lat, _ in samples if ts < t_a_done]
        idle_p50, during_p50 = ctx.pct(idle, 50), ctx.pct(during, 50)
        res["flood"] = {"probe": f"idle: {a.tenant_idle_n} sequential; during: open loop, one every "
                                 f"{a.probe_interval_s:g} s", "a_jobs": a.tenant_flood_jobs,
                        "a_texts_per_job": a.tenant_flood_n,
                        "a_submit_s": round(t_sub - t0, 3), "a_done_s": round(t_a_done - t0, 3), "a_all_done": ok,
                        "b_idle": ctx.lat_summary(idle), "b_during": ctx.lat_summary(during),
                        "ratio_p50_vs_idle": round(during_p50 / idle_p50, 2) if during and idle_p50 else None,
                        "loadavg_1m": ctx.loadavg()}
        ctx.log(f"#   flood: B p50 idle {ctx.lat_summary(idle)['p50_ms']} ms, during "
                f"{ctx.lat_summary(during)['p50_ms']} ms ({len(during)} requests)")

        # 2. both backlogged on identical work
        fair_texts = [ctx.big_texts[i % len(ctx.big_texts)] for i in range(a.fair_n)]
        body = job_body(model, fair_texts)
        before_tenants = tenant_sequences(ctx.metrics_port)
        t0 = time.time()
        ids_a = submit_jobs(port, [body] * a.fair_jobs, key=key_a, threads=8)
        t_a_sub = time.time()
        ids_b = submit_jobs(port, [body] * a.fair_jobs, key=key_b, threads=8)
        t_b_sub = time.time()
        # The share once both are backlogged: until B's jobs are all in, A's run alone (its head start,
        # 0.1-0.25 s of 2 vCPUs: ~600-1,200 texts, as much as the machine's load makes the submissions
        # take). From then, the next half of both backlogs (A still has more than its half left).
        both_backlogged = tenant_counts(ctx.metrics_port)
        half_texts, half_tokens = tenant_counts_at_half(ctx.metrics_port, both_backlogged, a.fair_jobs * a.fair_n)
        from_start = tenant_texts_since(ctx.metrics_port, before_tenants)
        ok = wait_all(ctx.dbc, ids_a + ids_b, time.monotonic() + a.tenant_cap_s, poll=0.1)
        rows = job_rows(ctx.dbc, ids_a + ids_b)
        set_a = set(ids_a)
        fin = sorted((r["finished_at"], r["id"] in set_a) for r in rows
                     if r["status"] == "succeeded" and r["finished_at"] is not None)
        total = len(ids_a) + len(ids_b)
        fair: dict = {"jobs_per_tenant": a.fair_jobs, "texts_per_job": a.fair_n, "all_done": ok,
                      "order": "A's jobs submitted first (8 connections), B's right after",
                      "a_submit_s": round(t_a_sub - t0, 3), "b_submit_done_s": round(t_b_sub - t0, 3),
                      "statuses": statuses(rows)}
        if len(fin) >= total // 2 and fin:
            t_mid = fin[total // 2 - 1][0]
            na = sum(1 for t, is_a in fin if t <= t_mid and is_a)
            nb = sum(1 for t, is_a in fin if t <= t_mid and not is_a)
            fair.update({"mid_run_s": round(t_mid - t0, 3), "a_texts_done_mid": na * a.fair_n,
                         "b_texts_done_mid": nb * a.fair_n,
                         "min_over_max": round(min(na, nb) / max(na, nb), 3) if max(na, nb) else None,
                         "a_last_finished_s": round(max((t for t, is_a in fin if is_a), default=t0) - t0, 3),
                         "b_last_finished_s": round(max((t for t, is_a in fin if not is_a), default=t0) - t0, 3)})
        half_texts, from_start = a_then_b(half_texts, rows, ids_a), a_then_b(from_start, rows, ids_a)
        half_tokens = a_then_b(half_tokens, rows, ids_a)
        if half_texts:
            # Texts, not whole jobs: a scheduler that runs each tenant's jobs side by side finishes
            # them together at the end, so counting finished jobs says little about the share.
            fair["texts_run_by_tenant_at_half"] = half_texts
            fair["texts_min_over_max"] = round(min(half_texts) / max(half_texts), 3) if max(half_texts) else None
            # The same moment counted from A's first submission, head start included (the figure up to
            # docs/benchmarks.md run 22).
            fair["texts_run_by_tenant_from_a_start"] = from_start
            fair["texts_from_a_start_min_over_max"] = (round(min(from_start) / max(from_start), 3)
                                                       if from_start and max(from_start) else None)
        if half_tokens and max(half_tokens):
            # The same window in tokens, the policy's unit. Each job's sequences run sorted by length,
            # short first, so a tenant further into its jobs runs fewer texts per token: in texts the
            # share reads low (run 26: 0.75-0.87 with A's head start slow to submit) where the tokens
            # run are equal but for B's first ~0.2 s (its jobs claimed, tokenized, behind A's window).
            fair["tokens_run_by_tenant_at_half"] = half_tokens
            fair["tokens_min_over_max"] = round(min(half_tokens) / max(half_tokens), 3)
        fair["loadavg_1m"] = ctx.loadavg()
        res["fair"] = fair
        return res
    finally:
        api.stop()
        ctx.meter.groups.pop("api_auth", None)


# ---------------------------------------------------------------- phase: re-sends without a fault
def resend(ctx, a, model: str) -> dict:
    """`poolq beat` running, K one-text jobs, no fault: messages sent more than once. Counted from
    both ends: the sweeper's 're-sent N job(s)' lines (the sender), and on the receiver a second
    claim (attempts > 1) or a redelivery the worker ignored (its log)."""
    beat = ensure_beat(ctx)
    offsets = log_offsets(ctx)
    t0 = time.time()
    bodies = [job_body(model, [ctx.texts[(7919 * i) % len(ctx.texts)]]) for i in range(a.resend_k)]
    ids = submit_jobs(ctx.port, bodies, threads=8)
    t_sub = time.time()
    ok = wait_all(ctx.dbc, ids, time.monotonic() + a.resend_cap_s, poll=0.1)
    t_done = time.time()
    # Let the beat schedule (sweeps every 15-30 s in the code this was written against) fire at least
    # once while the phase's jobs are in the tables.
    rest = a.resend_min_s - (time.time() - t0)
    if rest > 0:
        time.sleep(rest)
    rows = job_rows(ctx.dbc, ids)
    text = log_since(ctx, offsets)
    swept = sum(int(m) for m in re.findall(r"re-sent (\d+) job", text))
    ignored = len(re.findall(r"redelivery ignored", text))
    extra_claims = sum(max(0, (r["attempts"] or 0) - 1) for r in rows)
    return {"model": model, "k": a.resend_k, "all_done": ok, "submit_s": round(t_sub - t0, 3),
            "drained_s": round(t_done - t0, 3), "phase_s": round(time.time() - t0, 3),
            "beat": beat, "statuses": statuses(rows),
            "sweeper_resent": swept, "extra_claims": extra_claims,
            "jobs_claimed_more_than_once": sum(1 for r in rows if (r["attempts"] or 0) > 1),
            "redeliveries_ignored": ignored,
            "resends": max(swept, extra_claims + ignored), "loadavg_1m": ctx.loadavg()}


# ---------------------------------------------------------------- phase: kill -9 recovery
def recovery(ctx, a, model: str) -> dict:
    """A second `poolq worker`, jobs on both, kill -9 of the second (process group and every
    descendant), then the time until every job unfinished at the kill is finished, default
    timeouts and leases, `poolq beat` running. Capped: past the cap it reports 'not recovered'."""
    beat = ensure_beat(ctx)
    # the first worker's name(s), from the rows it wrote in the earlier phases
    w1_names = {r[0] for r in ctx.dbc.execute("SELECT DISTINCT worker FROM jobs WHERE worker IS NOT NULL")}
    env = dict(ctx.env)
    if env.get("POOLQ_WORKER_METRICS_PORT"):
        env["POOLQ_WORKER_METRICS_PORT"] = str(ctx.free_port())
    # `--gpu 0` (where the CLI has it) names the second worker apart (poolq-gpu0@host) so the rows say
    # which jobs it held; on a CPU-only host it only sets CUDA_VISIBLE_DEVICES, on a one-GPU host it is
    # what production runs.
    helptext = subprocess.run([sys.executable, "-m", "app.cli", "worker", "--help"], env=ctx.env, cwd=ctx.root,
                              capture_output=True, text=True).stdout
    argv = [sys.executable, "-m", "app.cli", "worker"] + (["--gpu", "0"] if "--gpu" in helptext else [])
    if "--gpu" not in helptext:
        w1_names = set()  # same name as the first: which rows it held is not told apart
    w2 = ctx.Proc("worker2", argv, env, ctx.logdir)
    ctx.cleanup.append(w2.stop)
    ctx.meter.groups["worker2"] = w2.pgid
    try:
        w2.wait_for_log("ready.", 180)
        time.sleep(1.0)  # its consumer is subscribed
        small = [job_body(model, [ctx.texts[(104_729 * i) % len(ctx.texts)]]) for i in range(a.recovery_small)]
        big_texts = [ctx.big_texts[i % len(ctx.big_texts)] for i in range(a.recovery_big_n)]
        big = [job_body(model, big_texts)] * a.recovery_big
        bodies: list = []
        # big jobs spread among the small ones, so both workers hold some of each
        step = max(1, len(small) // max(1, len(big)))
        for i in range(max(len(small), len(big) * step)):
            if i % step == 0 and big:
                bodies.append(big.pop())
            if i < len(small):
                bodies.append(small[i])
        bodies += big
        # The submits go on in a thread while this one watches: on a fast machine every job
        # can finish within a second of the last submit, and a kill after that finds the
        # second worker holding nothing (a recovery of 0 s that measures nothing).
        sent: dict = {}

        def send() -> None:
            try:
                sent["ids"] = submit_jobs(ctx.port, bodies, threads=8)
            except Exception as exc:  # noqa: BLE001 - raised below, on the phase's thread
                sent["error"] = exc
            sent["at"] = time.time()

        t0 = time.time()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(a.recovery_kill_after_s)
        # kill once the second worker is seen running some of them (where its name tells it apart)
        until = time.monotonic() + 10
        while w1_names and time.monotonic() < until and not running_elsewhere(ctx.dbc, t0, w1_names):
            time.sleep(0.02)
        killed = kill9(w2)
        t_kill = time.time()
        sender.join()
        if "error" in sent:
            raise sent["error"]
        ids, t_sub = sent["ids"], sent["at"]
        # read after the kill: the dead worker's rows cannot move any more
        at_kill = {r["id"]: r for r in job_rows(ctx.dbc, ids) if r["status"] not in FINISHED}
        held = [i for i, r in at_kill.items()
                if r["status"] == "running" and r["worker"] and r["worker"] not in w1_names]
        ctx.log(f"#   killed worker2 ({killed} processes) {t_kill - t0:.1f} s after the first submit; "
                f"{len(at_kill)} of {len(ids)} jobs unfinished")
        # every job unfinished at the kill, including those the second worker had reserved or claimed
        pending = list(at_kill)
        deadline = time.monotonic() + a.recovery_cap_s
        ok = wait_all(ctx.dbc, pending, deadline, poll=0.2) if pending else True
        t_end = time.time()
        rows = job_rows(ctx.dbc, ids)
        left = [r for r in rows if r["status"] not in FINISHED]
        fin_after = [r["finished_at"] for r in rows if r["id"] in at_kill and r["finished_at"] is not None]
        workers: dict[str, int] = {}
        for r in rows:
            workers[r["worker"] or "-"] = workers.get(r["worker"] or "-", 0) + 1
        res = {"model": model, "small_jobs": a.recovery_small, "big_jobs": a.recovery_big,
               "big_texts_per_job": a.recovery_big_n, "submit_s": round(t_sub - t0, 3),
               "kill_after_first_submit_s": round(t_kill - t0, 3), "processes_killed": killed,
               "unfinished_at_kill": len(at_kill), "statuses_at_kill": statuses(list(at_kill.values())),
               "running_on_killed_worker_at_kill": len(held) if w1_names else None,
               "held_finished_s": (round(max(r["finished_at"] for r in rows if r["id"] in set(held)) - t_kill, 3)
                                   if held and all(r["finished_at"] for r in rows if r["id"] in set(held)) else None),
               "cap_s": a.recovery_cap_s, "recovered": ok and not left,
               "recovery_s": round(max(fin_after) - t_kill, 3) if ok and not left and fin_after else
               (0.0 if ok and not left else None),
               "waited_s": round(t_end - t_kill, 3), "unfinished_at_cap": len(left),
               "statuses_at_cap": statuses(left), "statuses_end": statuses(rows),
               "attempts_max": max((r["attempts"] or 0) for r in rows) if rows else None,
               "rows_by_worker": workers, "beat": beat, "loadavg_1m": ctx.loadavg()}
        if not res["recovered"]:
            res["note"] = f"not recovered in {a.recovery_cap_s:g} s ({len(left)} job(s) still unfinished)"
        return res
    finally:
        w2.stop()
        ctx.meter.groups.pop("worker2", None)
