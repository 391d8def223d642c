"""`poolq batch ...` run as a subprocess against the test deployment's API, with tenant alpha's key."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from app import create_app
from app.batches import services
from app.cli.batch import Progress
from app.db import make_engine, make_session_factory
from app.tenants.records import Tenant
from tests_support import validate_whole

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def poolq_batch(api_url, api_keys, tmp_path):
    env = {**os.environ, "POOLQ_URL": api_url, "POOLQ_API_KEY": api_keys["alpha"]}

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        # Bytes, decoded here: text mode would turn the progress line's \r into \n.
        done = subprocess.run([sys.executable, "-m", "app.cli", "batch", *args], env=env, cwd=tmp_path,
                              capture_output=True, timeout=timeout)
        done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
        return done
    return run


def write_lines(path: Path, n: int, model: str | None = "tiny", extra: list[dict] = ()) -> list[str]:
    rows = [{"custom_id": f"c{i}", "method": "POST", "url": "/classify",
             "body": {**({"model": model} if model else {}), "input": f"line {i}"}} for i in range(n)]
    rows += list(extra)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["custom_id"] for r in rows]


def test_submit_wait_shows_progress_and_writes_the_output_beside_the_file(poolq_batch, tmp_path, worker_process):
    source = tmp_path / "nightly.jsonl"
    ids = write_lines(source, 1200, model=None)  # --model fills it in; 1200 lines are three chunks
    done = poolq_batch("submit", str(source), "--endpoint", "/classify", "--model", "tiny", "--wait",
                       "--metadata", "run=cli", "--poll", "0.1")
    assert done.returncode == 0, done.stderr
    batch_id, written = done.stdout.split()
    assert batch_id.startswith("batch_") and Path(written) == tmp_path / "nightly.output.jsonl"
    out = [json.loads(line) for line in Path(written).read_text().splitlines()]
    assert [o["custom_id"] for o in out] == ids and all(o["response"]["status_code"] == 200 for o in out)
    # stderr is a pipe here, not a terminal: whole lines, no carriage returns.
    lines = [line for line in done.stderr.splitlines() if line.startswith(batch_id)]
    assert "\r" not in done.stderr and lines and all("lines/s" in line and "ETA" in line for line in lines)
    assert f"{batch_id} completed" in lines[-1] and "1200/1200 100%" in lines[-1]
    shown = poolq_batch("status", batch_id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["metadata"] == {"run": "cli"}


def test_status_list_and_download_with_errors(poolq_batch, tmp_path, worker_process):
    source = tmp_path / "mixed.jsonl"
    write_lines(source, 5, extra=[{"custom_id": "bad", "method": "POST", "url": "/classify",
                                   "body": {"model": "no-such-model", "input": "x"}}])
    done = poolq_batch("submit", str(source), "--endpoint", "/classify", "--wait", "--output", "res.jsonl")
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.split()[0]
    assert (tmp_path / "res.jsonl").exists() and "1 line(s) failed" in done.stderr
    assert [json.loads(line)["custom_id"] for line in (tmp_path / "res.errors.jsonl").read_text().splitlines()] \
        == ["bad"]

    status = poolq_batch("status", batch_id)
    assert status.returncode == 0 and "completed" in status.stdout and "done=6/6" in status.stdout
    assert "failed=1" in status.stdout and "output_file: file-" in status.stdout
    listed = poolq_batch("list", "--limit", "3")
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].startswith(batch_id)
    assert len(listed.stdout.splitlines()) <= 3

    got = poolq_batch("download", batch_id)
    assert got.returncode == 0 and got.stdout.strip() == f"{batch_id}_output.jsonl"
    assert len((tmp_path / f"{batch_id}_output.jsonl").read_text().splitlines()) == 5
    errors = poolq_batch("download", batch_id, "--errors", "--output", "-")
    assert errors.returncode == 0 and json.loads(errors.stdout)["custom_id"] == "bad"


def test_cancel(poolq_batch, tmp_path, api_url, api_keys, settings, pg_url, worker_process):
    # Validated in this process with no chunk sent, so the batch is still running when cancelled.
    source = tmp_path / "slow.jsonl"
    write_lines(source, 8)
    poolq = create_app(settings).extensions["poolq"]
    engine = make_engine(pg_url)
    with make_session_factory(engine)() as session:
        tenant = session.scalar(select(Tenant.id).where(Tenant.name == "alpha"))
        from app.batches.files import create_file

        file = create_file(session, tenant, "slow.jsonl", "batch", source.read_bytes())
        batch = services.create_batch(session, tenant, {"input_file_id": file.id, "endpoint": "/classify"})
        validate_whole(session, batch.id, poolq.served, 1000, 4, window=0)
        session.commit()
    engine.dispose()
    cancelled = poolq_batch("cancel", batch.id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split()[1] in ("cancelling", "cancelled")
    again = poolq_batch("cancel", "batch_" + "0" * 24)
    assert again.returncode == 1 and "HTTP 404" in again.stderr


def test_http_errors_exit_non_zero_with_the_servers_message(poolq_batch, tmp_path):
    source = tmp_path / "in.jsonl"
    write_lines(source, 1)
    wrong = poolq_batch("submit", str(source), "--endpoint", "/nope")  # a usage error: refused before any upload
    assert wrong.returncode == 2 and "'/nope' is not one of" in wrong.stderr
    unauthorized = poolq_batch("list", "--api-key", "pq_wrong_key")
    assert unauthorized.returncode == 1 and "HTTP 401" in unauthorized.stderr
    unreachable = poolq_batch("status", "batch_x", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "cannot reach http://127.0.0.1:9" in unreachable.stderr
    bad_meta = poolq_batch("submit", str(source), "--endpoint", "/classify", "--metadata", "novalue")
    assert bad_meta.returncode == 2 and "KEY=VALUE" in bad_meta.stderr


def test_the_progress_line_has_done_total_rate_and_eta():
    stream = io.StringIO()
    bar = Progress(stream, interactive=True, now=100.0)
    batch = {"id": "batch_x", "status": "in_progress", "request_counts": {"total": 1000, "completed": 0, "failed": 0}}
    bar.draw(batch, now=100.0)
    batch["request_counts"].update(completed=240, failed=10)
    bar.draw(batch, now=105.0)
    bar.close()
    frames = stream.getvalue().split("\r")
    assert "0/1000" in frames[1]
    assert "250/1000  25%" in frames[2] and "50.00 lines/s" in frames[2] and "ETA 00:15" in frames[2]
    assert frames[2].endswith("\n")


def test_a_batch_done_between_two_polls_shows_its_rate():
    stream = io.StringIO()
    bar = Progress(stream, interactive=False, now=100.0)
    bar.draw({"id": "batch_x", "status": "completed", "request_counts": {"total": 1200, "completed": 1200,
                                                                         "failed": 0}}, now=100.5)
    assert "1200/1200 100%" in stream.getvalue() and "2400.00 lines/s" in stream.getvalue()


def test_without_a_terminal_progress_writes_a_line_per_tenth_and_status_change():
    stream = io.StringIO()  # not a TTY
    bar = Progress(stream, now=100.0)
    batch = {"id": "batch_x", "status": "in_progress", "request_counts": {"total": 100, "completed": 0, "failed": 0}}
    for done in range(0, 101):
        batch["request_counts"]["completed"] = done
        bar.draw(batch, now=100.0 + done)
    batch["status"] = "completed"
    bar.draw(batch, now=300.0)
    bar.close()
    lines = stream.getvalue().split("\n")
    assert "\r" not in stream.getvalue()
    assert lines[-1] == "" and len(lines) - 1 == 12  # 0%, 10%, ..., 100%, then the status change
    assert "50/100" in lines[5] and lines[-2].startswith("batch_x completed")
