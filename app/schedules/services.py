"""Schedules as the API sees them: create, read, list, pause, resume, delete. Functions flush; callers commit."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.batches.files import FILE_ID, epoch
from app.batches.records import File
from app.batches.services import completion_window_s
from app.db.paging import newest_first, page_limit
from app.errors import bad_request, not_found
from app.pooling.routes import ROUTES as URL_ENDPOINTS  # URL -> endpoint kind
from app.schedules.cron import CronError, next_fire, normalize_cron, parse_zone
from app.schedules.records import Schedule
from app.served import ServedModel, ServedModels

if TYPE_CHECKING:
    from app.schedules.schemas import ScheduleCreateRequest

SCHEDULE_ID = re.compile(r"^sched_[0-9a-f]{24}$")
MAX_PAGE = 100
DURATION = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SINCE_S = 366 * 86400
# The job tasks each endpoint kind runs (a /pooling job may be a classify one).
KIND_TASKS = {"classify": ("classify",), "pooling": ("classify", "token_classify"), "score": ("score",),
              "rerank": ("rerank",)}


def since_seconds(raw: str) -> int:
    match = DURATION.match(raw)
    seconds = int(match.group(1)) * DURATION_UNITS[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_SINCE_S:
        raise bad_request("selection.since must be <N>s, <N>m, <N>h or <N>d, up to 366 days", "selection.since")
    return seconds


def served_model_for(served: ServedModels, name: str, endpoint: str, revision: str | None) -> ServedModel:
    """The served model a schedule names, able to run its endpoint, at its revision. APIError (400) otherwise."""
    model = next((m for m in served if m.name == name), None)
    if model is None:
        raise bad_request(f"The model `{name}` is not served; served models: {[m.name for m in served]}", "model")
    kind = URL_ENDPOINTS[endpoint]
    card = model.card
    if (kind == "classify" and card.task != "classify") or (kind in ("score", "rerank") and not card.supports_score):
        raise bad_request(f"The model `{name}` does not serve {endpoint}.", "endpoint")
    if revision is not None and revision != model.spec.revision:
        served_as = f"revision {model.spec.revision!r}" if model.spec.revision else "no pinned revision"
        raise bad_request(f"revision {revision!r} does not match the served model `{name}` ({served_as}).",
                          "revision")
    return model


def create_schedule(session: Session, tenant_id: uuid.UUID, body: ScheduleCreateRequest, served: ServedModels,
                    now: dt.datetime, max_per_tenant: int = 0) -> Schedule:
    if max_per_tenant:
        # Each schedule fires batches on its own; a bound keeps one tenant's
        # automation from crowding the bulk lane. Two racing creates may both
        # pass at the limit: a soft bound is enough for that.
        count = session.scalar(select(func.count()).select_from(Schedule).where(Schedule.tenant_id == tenant_id))
        if count >= max_per_tenant:
            raise bad_request(f"This API key's tenant already has {count} schedules, the limit "
                              f"(POOLQ_MAX_SCHEDULES_PER_TENANT). Delete one first.", "name")
    try:
        cron = normalize_cron(body.cron)
    except CronError as exc:
        raise bad_request(str(exc), "cron") from None
    try:
        parse_zone(body.timezone)
    except CronError as exc:
        raise bad_request(str(exc), "timezone") from None
    served_model_for(served, body.model, body.endpoint, body.revision)
    completion_window_s(body.completion_window)
    source = _source(session, tenant_id, body)
    try:
        upcoming = next_fire(cron, body.timezone, now)
    except CronError as exc:
        raise bad_request(str(exc), "cron") from None
    schedule = Schedule(
        id=f"sched_{secrets.token_hex(12)}", tenant_id=tenant_id, name=body.name, cron=cron, timezone=body.timezone,
        endpoint=body.endpoint, model=body.model, revision=body.revision, completion_window=body.completion_window,
        meta=_metadata(body.metadata), paused=body.paused, next_run_at=None if body.paused else upcoming,
        created_at=now, **source)  # only the source given is set: the other stays SQL NULL
    session.add(schedule)
    session.flush()
    return schedule


def _source(session: Session, tenant_id: uuid.UUID, body: ScheduleCreateRequest) -> dict[str, Any]:
    if (body.input_file_id is None) == (body.selection is None):
        raise bad_request("Give exactly one source: input_file_id or selection.", "input_file_id")
    if body.input_file_id is not None:
        file = session.get(File, body.input_file_id) if FILE_ID.match(body.input_file_id) else None
        if file is None or file.tenant_id != tenant_id:
            raise bad_request(f"No such File object: {body.input_file_id}", "input_file_id")
        if file.purpose != "batch":
            raise bad_request(f"File {file.id} has purpose {file.purpose!r}; a batch input needs purpose 'batch'.",
                              "input_file_id")
        return {"input_file_id": file.id}
    selection = body.selection.model_dump()
    tasks = KIND_TASKS[URL_ENDPOINTS[body.endpoint]]
    if selection["task"] is not None and selection["task"] not in tasks:
        raise bad_request(f"selection.task {selection['task']!r} does not run on {body.endpoint}; "
                          f"it runs {list(tasks)}", "selection.task")
    if selection["since"] is not None:
        since_seconds(selection["since"])
    _metadata(selection["metadata"], "selection.metadata", 16)
    return {"selection": selection}


def _metadata(raw: dict[str, str] | None, param: str = "metadata", most: int = 15) -> dict[str, str] | None:
    # As a batch's metadata (app/batches/services.py), less one key: each batch gets `schedule_id` too.
    if raw is None:
        return None
    if len(raw) > most or any(len(k) > 64 or len(v) > 512 for k, v in raw.items()):
        raise bad_request(f"{param} must have at most {most} keys of at most 64 characters, with values of at most "
                          "512 characters", param)
    if param == "metadata" and "schedule_id" in raw:
        raise bad_request("metadata.schedule_id is set by poolq on each batch", param)
    return raw


def get_schedule(session: Session, schedule_id: str, tenant_id: uuid.UUID) -> Schedule:
    """The tenant's schedule; another tenant's is as absent as a missing one."""
    schedule = session.get(Schedule, schedule_id) if SCHEDULE_ID.match(schedule_id) else None
    if schedule is None or schedule.tenant_id != tenant_id:
        raise not_found(f"No such Schedule object: {schedule_id}")
    return schedule


def list_schedules(session: Session, tenant_id: uuid.UUID, args: dict[str, str]) -> tuple[list[Schedule], bool]:
    """Newest first; `after` is the last id of the previous page."""
    limit = page_limit(args, most=MAX_PAGE)
    anchor = get_schedule(session, args["after"], tenant_id) if args.get("after") else None
    return newest_first(session, select(Schedule).where(Schedule.tenant_id == tenant_id), Schedule, anchor, limit)


def pause_schedule(session: Session, schedule_id: str, tenant_id: uuid.UUID) -> Schedule:
    """No next slot while paused. A firing that already claimed its slot still completes."""
    schedule = get_schedule(session, schedule_id, tenant_id)
    session.execute(update(Schedule).where(Schedule.id == schedule.id).values(paused=True, next_run_at=None))
    session.refresh(schedule)
    return schedule


def resume_schedule(session: Session, schedule_id: str, tenant_id: uuid.UUID, now: dt.datetime) -> Schedule:
    """The next slot after now: slots missed while paused are not caught up. Resuming an active schedule is a no-op."""
    schedule = get_schedule(session, schedule_id, tenant_id)
    upcoming = next_fire(schedule.cron, schedule.timezone, now)
    session.execute(update(Schedule).where(Schedule.id == schedule.id, Schedule.paused.is_(True))
                    .values(paused=False, next_run_at=upcoming))
    session.refresh(schedule)
    return schedule


def delete_schedule(session: Session, schedule_id: str, tenant_id: uuid.UUID) -> None:
    schedule = get_schedule(session, schedule_id, tenant_id)
    session.execute(delete(Schedule).where(Schedule.id == schedule.id))


def schedule_resource(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "object": "schedule",
        "name": schedule.name,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "endpoint": schedule.endpoint,
        "model": schedule.model,
        "revision": schedule.revision,
        "input_file_id": schedule.input_file_id,
        "selection": schedule.selection,
        "completion_window": schedule.completion_window,
        "metadata": schedule.meta,
        "paused": schedule.paused,
        "next_run_at": epoch(schedule.next_run_at),
        "last_run_at": epoch(schedule.last_run_at),
        "last_batch_id": schedule.last_batch_id,
        "last_error": schedule.last_error,
        "created_at": epoch(schedule.created_at),
    }

