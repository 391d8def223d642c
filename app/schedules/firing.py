"""Firing a schedule: its input becomes a batch, made by the batches module as POST /v1/batches makes one.

Functions flush; callers commit, then send the batch's validation
(app/batches/dispatch.py), which is the batch's first task.

Each slot fires once. Beat reads the due schedules with their next_run_at,
then fires each one in its own transaction that starts with

    UPDATE schedules SET next_run_at = <next slot after now>
     WHERE id = :id AND next_run_at = :slot

and makes the batch only if that changed a row. A second beat, or a message
delivered twice, finds next_run_at moved and does nothing; the move and the
batch commit together, so a crash between them leaves the slot due and
nothing made.

Missed slots fire once: the next slot is the first one after now, not after
the slot fired, so a deployment that was down through several slots fires
once when it is back, not once per slot it missed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.batches.files import create_file, file_content
from app.batches.records import Batch, File
from app.batches.services import create_batch
from app import jsonparse
from app.errors import APIError
from app.jobs.records import Job
from app.pooling.routes import ROUTES as URL_ENDPOINTS
from app.schedules.cron import CronError, next_fire
from app.schedules.records import Schedule
from app.schedules.services import KIND_TASKS, served_model_for, since_seconds
from app.served import ServedModels

# What a stored job request carries beyond its route's body: a new line gets
# a new request id, and the batch's URL says the endpoint.
JOB_ONLY_KEYS = ("endpoint", "request_id")


class FiringError(APIError):
    """Why a firing made no batch: the trigger route answers it, beat records it as `last_error`."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(status, message)


@dataclass(frozen=True)
class Fired:
    schedule_id: str
    batch_id: str | None  # None: the firing made no batch, for `error`
    error: str | None = None


def due_schedules(session: Session, now: dt.datetime, limit: int = 100) -> list[tuple[str, dt.datetime]]:
    """(id, slot) of schedules whose slot has come, oldest slot first."""
    query = (select(Schedule.id, Schedule.next_run_at).where(Schedule.next_run_at <= now)
             .order_by(Schedule.next_run_at).limit(limit))
    return [(row.id, row.next_run_at) for row in session.execute(query)]


def fire_due(session: Session, schedule_id: str, slot: dt.datetime, now: dt.datetime, served: ServedModels,
             max_bytes: int) -> Fired | None:
    """Claim `slot` and fire; None when another firing claimed it (or a pause or a delete came first)."""
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        return None
    values: dict[str, Any] = {"next_run_at": None}
    try:
        values["next_run_at"] = next_fire(schedule.cron, schedule.timezone, now)
    except CronError as exc:  # its zone left the tz database: stop it, and say why
        values.update(paused=True, last_error=f"paused: {exc}")
    claimed = session.execute(update(Schedule).where(Schedule.id == schedule_id, Schedule.next_run_at == slot)
                              .values(**values)).rowcount
    if not claimed:
        return None
    session.refresh(schedule)
    try:
        batch = fire(session, schedule, now, served, max_bytes)
    except FiringError as exc:
        _record(session, schedule, now, None, exc.message)
        return Fired(schedule.id, None, exc.message)
    return Fired(schedule.id, batch.id)


def fire(session: Session, schedule: Schedule, now: dt.datetime, served: ServedModels, max_bytes: int) -> Batch:
    """Make the batch now (beat's firing, or a trigger). Raises FiringError before writing anything."""
    try:
        served_model_for(served, schedule.model, schedule.endpoint, schedule.revision)
    except APIError as exc:
        raise FiringError(exc.message) from None
    if schedule.input_file_id is not None:
        file_id, content = _file_input(session, schedule, max_bytes)
    else:
        file_id, content = None, selection_input(session, schedule, now, max_bytes)
    if content is not None:
        name = f"schedule-{schedule.id}-{now.astimezone(dt.timezone.utc):%Y%m%dT%H%M%SZ}.jsonl"
        file_id = create_file(session, schedule.tenant_id, name, "batch", content).id
    batch = create_batch(session, schedule.tenant_id, {
        "input_file_id": file_id, "endpoint": schedule.endpoint, "completion_window": schedule.completion_window,
        "metadata": {**(schedule.meta or {}), "schedule_id": schedule.id}})
    _record(session, schedule, now, batch.id, None)
    return batch


def _record(session: Session, schedule: Schedule, now: dt.datetime, batch_id: str | None, error: str | None) -> None:
    values: dict[str, Any] = {"last_run_at": now, "last_error": error}
    if batch_id is not None:
        values["last_batch_id"] = batch_id
    session.execute(update(Schedule).where(Schedule.id == schedule.id).values(**values))
    session.refresh(schedule)


def _file_input(session: Session, schedule: Schedule, max_bytes: int) -> tuple[str | None, bytes | None]:
    """The schedule's file as is when every line already names its model; otherwise its lines with that model."""
    file = session.get(File, schedule.input_file_id)
    if file is None or file.tenant_id != schedule.tenant_id:
        raise FiringError(f"The input file {schedule.input_file_id} was deleted.")
    rewritten = with_model(file_content(session, file) or b"", schedule.model)
    if rewritten is None:
        return file.id, None
    if len(rewritten) > max_bytes:
        raise FiringError(f"The input with model {schedule.model!r} is larger than {max_bytes} bytes.", 413)
    return None, rewritten


def with_model(content: bytes, model: str) -> bytes | None:
    """Every line's body.model set to `model`; None when no line changes.

    Lines that are not JSON objects with a body stay as they are: the batch
    reports them in its error file, as for a file given to POST /v1/batches.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None  # not JSONL: the batch fails validation and says so
    out, changed = [], False
    for raw in text.split("\n"):
        try:
            item = jsonparse.loads(raw) if raw.strip() else None
        except ValueError:
            item = None
        if isinstance(item, dict) and isinstance(item.get("body"), dict) and item["body"].get("model") != model:
            item["body"]["model"] = model
            raw, changed = json.dumps(item), True
        out.append(raw)
    return "\n".join(out).encode() if changed else None


def selection_input(session: Session, schedule: Schedule, now: dt.datetime, max_bytes: int) -> bytes:
    """One run-batch line per selected job, oldest first: its stored request as the body, with the schedule's
    model, and the job id as custom_id. Jobs run through another kind of endpoint are left out."""
    selection = schedule.selection or {}
    kind = URL_ENDPOINTS[schedule.endpoint]
    tasks = (selection["task"],) if selection.get("task") else KIND_TASKS[kind]
    query = select(Job.id, Job.request).where(Job.tenant_id == schedule.tenant_id, Job.task.in_(tasks),
                                              Job.created_at < now)
    if selection.get("since"):
        query = query.where(Job.created_at >= now - dt.timedelta(seconds=since_seconds(selection["since"])))
    for column, key in ((Job.model, "model"), (Job.status, "status")):
        if selection.get(key) is not None:
            query = query.where(column == selection[key])
    for key, value in (selection.get("metadata") or {}).items():
        query = query.where(Job.meta[key].as_string() == value)
    lines, size = [], 0
    # Requests are the big column: stream them rather than load every row at once.
    for job_id, request in session.execute(query.order_by(Job.created_at, Job.id).execution_options(yield_per=500)):
        if request.get("endpoint") != kind:
            continue
        body = {k: v for k, v in request.items() if k not in JOB_ONLY_KEYS and (k != "task" or kind == "pooling")}
        body["model"] = schedule.model
        line = json.dumps({"custom_id": str(job_id), "method": "POST", "url": schedule.endpoint,
                           "body": body}).encode() + b"\n"
        size += len(line)
        if size > max_bytes:
            raise FiringError(f"The selected jobs make an input larger than {max_bytes} bytes; narrow the selection.",
                              413)
        lines.append(line)
    if not lines:
        raise FiringError("The selection matched no job, so no batch was made.")
    return b"".join(lines)
