"""Load generator for bench/system.py: one process, N client threads, stdlib HTTP.

Kept free of torch and of the project's imports so many of these processes
start fast and cost little. Reads one JSON config on stdin, waits until its
`start_at` (epoch seconds, so several processes start together), runs, and
prints one JSON object on stdout:

    {"lat": [seconds per operation], "ok": n, "errors": n, "first_error": str|null,
     "t0": epoch start, "t1": epoch end of the last operation, "cpu_s": this process's CPU}

Modes (each client thread keeps one keep-alive connection to 127.0.0.1):
- `sync`:   POST /classify {"model", "input": text}; the request waits for the job (200).
- `jobs`:   POST /v1/jobs (one-text classify job), then GET /v1/jobs/{id} every
            `poll_s` until it is finished; latency = submit to result seen.
- `submit`: POST /v1/jobs only (202); completion is observed by the caller.
"""
from __future__ import annotations

import http.client
import json
import resource
import sys
import threading
import time


class Conn:
    """One keep-alive HTTP connection; reconnects (and retries idempotent GETs) on a dropped socket."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.c = host, port, None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        attempts = 3 if method == "GET" else 2
        for attempt in range(attempts):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection(self.host, self.port, timeout=300)
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.c.request(method, path, body=body, headers=headers)
                r = self.c.getresponse()
                data = r.read()
                if (r.getheader("Connection") or "").lower() == "close":
                    self.c.close()
                    self.c = None
                return r.status, data
            except (http.client.HTTPException, OSError):
                if self.c is not None:
                    self.c.close()
                    self.c = None
                # A POST is retried only when the server closed an idle keep-alive
                # socket before reading it (RemoteDisconnected on the first try).
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")


def run(cfg: dict) -> dict:
    host, port, mode, model = cfg["host"], int(cfg["port"]), cfg["mode"], cfg["model"]
    texts, clients, per_client = cfg["texts"], int(cfg["clients"]), int(cfg["per_client"])
    poll_s = float(cfg.get("poll_s", 0.01))
    offset = int(cfg.get("offset", 0))
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    first_error: list[str] = []
    ends = [0.0] * clients

    def one(conn: Conn, text: str) -> bool:
        if mode == "sync":
            status, data = conn.request("POST", "/classify", json.dumps({"model": model, "input": text}).encode())
            if status != 200:
                raise RuntimeError(f"/classify {status}: {data[:200]!r}")
            return True
        body = json.dumps({"task": "classify", "model": model, "input": [text]}).encode()
        status, data = conn.request("POST", "/v1/jobs", body)
        if status != 202:
            raise RuntimeError(f"/v1/jobs {status}: {data[:200]!r}")
        if mode == "submit":
            return True
        job_id = json.loads(data)["id"]
        while True:
            time.sleep(poll_s)
            status, data = conn.request("GET", f"/v1/jobs/{job_id}")
            job = json.loads(data)
            if job["status"] not in ("queued", "running"):
                if job["status"] != "succeeded":
                    raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
                return True

    def client(i: int) -> None:
        conn = Conn(host, port)
        for k in range(per_client):
            text = texts[(offset + i * per_client + k) % len(texts)]
            t = time.perf_counter()
            try:
                one(conn, text)
                lat[i].append(time.perf_counter() - t)
            except Exception as exc:  # counted, reported, never fatal for the other clients
                errors[i] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}"[:300])
        ends[i] = time.time()

    delay = float(cfg.get("start_at", 0)) - time.time()
    if delay > 0:
        time.sleep(delay)
    t0 = time.time()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    flat = [x for per in lat for x in per]
    return {"lat": flat, "ok": len(flat), "errors": sum(errors), "first_error": first_error[0] if first_error else None,
            "t0": t0, "t1": max(ends) if ends else t0, "cpu_s": usage.ru_utime + usage.ru_stime}


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))
