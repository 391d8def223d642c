"""`poolq batch ...`: bulk batches over the HTTP API, so it works against any deployment.

Everything goes through /v1/files and /v1/batches with `requests`; nothing
here touches the database or imports the app. Machine-readable results
(the batch id, written paths) go to stdout; progress and messages to stderr.
Exit status: 0 when it worked (with --wait: the batch completed), 1 on an
HTTP error, an unreachable server, or a batch that ended otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from app.cli.http import API as BaseAPI
from app.cli.http import ENDPOINTS, connection_options

FINAL = ("completed", "failed", "expired", "cancelled")


class API(BaseAPI):
    """The batches API."""

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/batches/{batch_id}").json()

    def content(self, file_id: str) -> bytes:
        return self.call("GET", f"/v1/files/{file_id}/content").content


def _api(url: str | None, api_key: str | None) -> API:
    return API(url, api_key)


@click.group("batch")
def batch() -> None:
    """Submit, watch, download, cancel and list bulk batches (over the HTTP API)."""


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--endpoint", required=True, type=click.Choice(ENDPOINTS), help="The route every line runs on.")
@click.option("--model", default=None, help="Run every line on this model (sets each line's body.model).")
@click.option("--window", "completion_window", default="24h", show_default=True,
              help="Completion window: 24h, or <N>s|m|h|d up to 7 days.")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="A metadata pair for the batch; repeatable.")
@click.option("--webhook", default=None, help="Called (signed) when the batch ends.")
@click.option("--wait", is_flag=True, help="Show progress until the batch ends, then download its output.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --wait: where the output goes (default FILE's name + .output.jsonl, beside it).")
@click.option("--poll", type=float, default=0.5, show_default=True, help="Seconds between polls with --wait.")
@connection_options
def submit(file: Path, endpoint, model, completion_window, metadata, webhook, wait, output, poll, url,
           api_key) -> None:
    """Upload FILE (JSONL of {custom_id, method, url, body} lines) and run it as a batch."""
    meta = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        meta[key] = value
    content = file.read_bytes()
    if not content.strip():
        raise click.BadParameter(f"{file} is empty: a batch needs at least one line", param_hint="FILE")
    if model:
        content = _with_model(content, model)
    api = _api(url, api_key)
    uploaded = api.call("POST", "/v1/files", files={"file": (file.name, content)}, data={"purpose": "batch"}).json()
    body: dict[str, Any] = {"input_file_id": uploaded["id"], "endpoint": endpoint,
                            "completion_window": completion_window}
    if meta:
        body["metadata"] = meta
    if webhook:
        body["webhook"] = webhook
    created = api.call("POST", "/v1/batches", json=body).json()
    click.echo(created["id"])
    if not wait:
        return
    done = _watch(api, created["id"], poll)
    target = output or file.with_name(file.name.removesuffix(".jsonl") + ".output.jsonl")
    _finish(api, done, target)


def _with_model(content: bytes, model: str) -> bytes:
    """Set body.model on every line that parses; others go through unchanged (the error file reports them)."""
    out = []
    for raw in content.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            out.append(raw)
            continue
        if isinstance(line, dict) and isinstance(line.get("body"), dict):
            line["body"]["model"] = model
            raw = json.dumps(line).encode()
        out.append(raw)
    return b"\n".join(out) + b"\n"


class Progress:
    """A status line on stderr, drawn by tqdm: done/total, rate, ETA.

    The rate counts from when the watch started (the batch had done nothing
    then), so a batch that finishes between two polls still shows how fast it
    went. On a terminal the line is redrawn in place with \\r; elsewhere (a log
    file, CI) carriage returns would pile up into one unreadable line, so a new
    line is written only when the status changes or another tenth is done.
    """

    BAR_FORMAT = "{desc} [{bar:30}] {n_fmt}/{total_fmt} {percentage:3.0f}% {rate_fmt} ETA {remaining}"

    def __init__(self, stream=None, interactive: bool | None = None, now: float | None = None):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.started = time.monotonic() if now is None else now
        self.last_len = 0
        self.last_step: tuple[str, int] | None = None  # non-interactive: what the last line showed

    def render(self, batch: dict[str, Any], now: float) -> str:
        counts = batch["request_counts"]
        done, total = counts["completed"] + counts["failed"], counts["total"]
        return tqdm.format_meter(done, total or None, max(now - self.started, 1e-3),
                                 prefix=f"{batch['id']} {batch['status']:<11}", unit=" lines", ascii="-#",
                                 bar_format=self.BAR_FORMAT)

    def draw(self, batch: dict[str, Any], now: float | None = None) -> None:
        text = self.render(batch, time.monotonic() if now is None else now)
        if self.interactive:
            self.stream.write("\r" + text + " " * max(0, self.last_len - len(text)))
        else:
            counts = batch["request_counts"]
            done, total = counts["completed"] + counts["failed"], counts["total"]
            step = (batch["status"], 10 * done // total if total else 0)
            if step == self.last_step:
                return
            self.last_step = step
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last_len = len(text)

    def close(self) -> None:
        if self.interactive and self.last_len:
            self.stream.write("\n")
            self.stream.flush()


def _watch(api: API, batch_id: str, poll: float) -> dict[str, Any]:
    progress = Progress()
    try:
        while True:
            current = api.batch(batch_id)
            progress.draw(current)
            if current["status"] in FINAL:
                return current
            time.sleep(poll)
    finally:
        progress.close()


def _finish(api: API, done: dict[str, Any], target: Path) -> None:
    """Write the output (and the error file beside it), then exit 1 unless the batch completed."""
    counts = done["request_counts"]
    if done.get("output_file_id"):
        target.write_bytes(api.content(done["output_file_id"]))
        click.echo(str(target))
    if done.get("error_file_id"):
        errors = target.with_name(target.name.removesuffix(".jsonl").removesuffix(".output") + ".errors.jsonl")
        errors.write_bytes(api.content(done["error_file_id"]))
        click.echo(f"{counts['failed']} line(s) failed: {errors}", err=True)
    if done["status"] != "completed":
        detail = "; ".join(e["message"] for e in (done.get("errors") or {}).get("data", [])[:3])
        raise click.ClickException(f"batch {done['id']} {done['status']}" + (f": {detail}" if detail else ""))
    click.echo(f"batch {done['id']} completed: {counts['completed']} ok, {counts['failed']} failed", err=True)


@batch.command("status")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="The batch object as the API returns it.")
@connection_options
def status(batch_id, as_json, url, api_key) -> None:
    """One batch: status, counts, files."""
    found = _api(url, api_key).batch(batch_id)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    counts = found["request_counts"]
    click.echo(f"{found['id']}  {found['status']}  endpoint={found['endpoint']}  "
               f"done={counts['completed'] + counts['failed']}/{counts['total']}  "
               f"completed={counts['completed']}  failed={counts['failed']}")
    for key in ("input_file_id", "output_file_id", "error_file_id"):
        if found.get(key):
            click.echo(f"  {key.removesuffix('_id')}: {found[key]}")
    for error in (found.get("errors") or {}).get("data", []):
        click.echo(f"  error: {error['message']}")


@batch.command("download")
@click.argument("batch_id")
@click.option("--output", default=None, help="A path, or - for stdout (default ./<id>_output.jsonl).")
@click.option("--errors", is_flag=True, help="The error file instead of the output file.")
@connection_options
def download(batch_id, output, errors, url, api_key) -> None:
    """Save a batch's output (or error) file."""
    api = _api(url, api_key)
    found = api.batch(batch_id)
    kind = "error" if errors else "output"
    file_id = found.get(f"{kind}_file_id")
    if not file_id:
        raise click.ClickException(f"batch {batch_id} ({found['status']}) has no {kind} file")
    content = api.content(file_id)
    if output == "-":
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return
    target = Path(output or f"{batch_id}_{kind}.jsonl")
    target.write_bytes(content)
    click.echo(str(target))


@batch.command("cancel")
@click.argument("batch_id")
@connection_options
def cancel(batch_id, url, api_key) -> None:
    """Cancel a batch: chunks not started never run; running ones finish and are kept."""
    found = _api(url, api_key).call("POST", f"/v1/batches/{batch_id}/cancel").json()
    click.echo(f"{found['id']}  {found['status']}")


@batch.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="How many batches.")
@connection_options
def list_(limit, url, api_key) -> None:
    """The newest batches, one a line."""
    page = _api(url, api_key).call("GET", "/v1/batches", params={"limit": limit}).json()
    for found in page["data"]:
        counts = found["request_counts"]
        created = datetime.fromtimestamp(found["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{found['id']}  {found['status']:<11} {found['endpoint']:<11} "
                   f"{counts['completed'] + counts['failed']}/{counts['total']}  {created}")
