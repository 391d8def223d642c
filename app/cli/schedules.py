"""`poolq schedules ...`: cron schedules over the HTTP API, so it works against any deployment.

Nothing here touches the database or imports the app. Ids go to stdout (so
`id=$(poolq schedules create ...)` works); descriptions go to stderr;
`--json` prints the API's response instead. Exit status 1 on an HTTP error
or an unreachable server, with the server's message.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from app.cli.http import API, ENDPOINTS, connection_options


def _call(url: str | None, api_key: str | None, method: str, path: str, **kwargs) -> Any:
    response = API(url, api_key).call(method, path, **kwargs)
    return response.json() if response.content else None


def _options(command):
    """--url, --api-key and --json on every subcommand, so they may come anywhere on the line."""
    command = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON response.")(command)
    return connection_options(command)


def _when(epoch: int | None, zone: str) -> str:
    if epoch is None:
        return "-"
    try:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(zone)
    except (ValueError, KeyError, OSError):
        tz = dt.timezone.utc
    return dt.datetime.fromtimestamp(epoch, tz).isoformat(timespec="minutes")


def _describe(s: dict[str, Any]) -> str:
    source = f"file {s['input_file_id']}" if s["input_file_id"] else f"selection {json.dumps(s['selection'])}"
    state = "paused" if s["paused"] else f"next {_when(s['next_run_at'], s['timezone'])}"
    last = f"last batch {s['last_batch_id']}" if s["last_batch_id"] else "no batch yet"
    if s["last_error"]:
        last += f" (last firing: {s['last_error']})"
    return (f"{s['id']}  {s['name']!r}  '{s['cron']}' {s['timezone']}  {s['endpoint']} on {s['model']}  {source}  "
            f"{state}  {last}")


def _emit(body: Any, as_json: bool, stdout: str, stderr: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(stdout)
    if stderr:
        click.echo(stderr, err=True)


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str] | None:
    out = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        out[key] = item
    return out or None


@click.group("schedules")
def schedules() -> None:
    """Create, list, pause, resume, trigger and delete cron schedules that fire batches (over the HTTP API)."""


@schedules.command("create")
@click.option("--name", required=True, help="A name to recognize it by.")
@click.option("--cron", required=True, help='Five fields on the zone\'s wall clock, e.g. "0 2 * * *", or @daily.')
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone, e.g. Europe/Paris.")
@click.option("--endpoint", required=True, type=click.Choice(ENDPOINTS), help="The route each line runs on.")
@click.option("--model", required=True, help="A served model; every line runs on it.")
@click.option("--revision", default=None, help="Must equal the served model's revision (checked at each firing).")
@click.option("--file", "file_id", default=None, help="Source: an uploaded batch input file id.")
@click.option("--select-model", default=None, help="Source: past jobs that ran on this model.")
@click.option("--select-task", type=click.Choice(("classify", "token_classify", "score", "rerank")), default=None,
              help="Source: past jobs of this task.")
@click.option("--select-status", type=click.Choice(("queued", "running", "succeeded", "failed", "cancelled")),
              default=None, help="Source: past jobs in this status.")
@click.option("--select-since", default=None, help="Past jobs created this long before each firing: 24h, 7d, …")
@click.option("--select-metadata", multiple=True, help="KEY=VALUE the past jobs carry; repeatable.")
@click.option("--completion-window", default="24h", show_default=True,
              help="Each batch's completion window: 24h, or <N>s|m|h|d up to 7 days.")
@click.option("--metadata", multiple=True, help="KEY=VALUE for each batch's metadata; repeatable.")
@click.option("--paused", is_flag=True, help="Create it paused.")
@_options
def create(name, cron, timezone, endpoint, model, revision, file_id, select_model, select_task, select_status,
           select_since, select_metadata, completion_window, metadata, paused, url, api_key, as_json) -> None:
    """Create a schedule from --file FILE_ID, or from a selection of past jobs (--select-...)."""
    selection = {"model": select_model, "task": select_task, "status": select_status, "since": select_since,
                 "metadata": _pairs(select_metadata, "--select-metadata")}
    selecting = any(v is not None for v in selection.values())
    if (file_id is None) == (not selecting):
        raise click.UsageError("give exactly one source: --file FILE_ID, or --select-model/--select-since/...")
    body = {"name": name, "cron": cron, "timezone": timezone, "endpoint": endpoint, "model": model,
            "revision": revision, "completion_window": completion_window, "metadata": _pairs(metadata, "--metadata"),
            "paused": paused}
    if file_id is not None:
        body["input_file_id"] = file_id
    else:
        body["selection"] = {k: v for k, v in selection.items() if v is not None}
    created = _call(url, api_key, "POST", "/v1/schedules", json=body)
    _emit(created, as_json, created["id"], _describe(created))


@schedules.command("list")
@click.option("--limit", type=int, default=100, show_default=True, help="Page size (every page is listed).")
@_options
def list_(limit, url, api_key, as_json) -> None:
    """The tenant's schedules, newest first."""
    rows, after = [], None
    while True:
        page = _call(url, api_key, "GET", "/v1/schedules",
                     params={"limit": limit, **({"after": after} if after else {})})
        rows += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(_describe(row))


def _action(verb: str, summary: str):
    @schedules.command(verb, help=summary)
    @click.argument("schedule_id")
    @_options
    def command(schedule_id, url, api_key, as_json) -> None:
        body = _call(url, api_key, "POST", f"/v1/schedules/{schedule_id}/{verb}")
        if verb == "trigger":
            _emit(body, as_json, body["id"], f"schedule {schedule_id} fired batch {body['id']} ({body['status']})")
        else:
            _emit(body, as_json, _describe(body))
    return command


pause = _action("pause", "Stop firing SCHEDULE_ID until resumed.")
resume = _action("resume", "Fire SCHEDULE_ID again from its next slot after now.")
trigger = _action("trigger", "Fire SCHEDULE_ID now (a batch); prints the batch id.")


@schedules.command("delete")
@click.argument("schedule_id")
@_options
def delete(schedule_id, url, api_key, as_json) -> None:
    """Delete SCHEDULE_ID; the batches it made stay."""
    body = _call(url, api_key, "DELETE", f"/v1/schedules/{schedule_id}")
    _emit(body, as_json, f"deleted {schedule_id}")
