"""`/v1/schedules`: cron schedules that fire batches, scoped to the caller's tenant."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from pydantic import ValidationError

from app.batches import dispatch
from app.batches.services import batch_resource
from app.db.base import utcnow
from app.db.request import db_session
from app.errors import bad_request, validation_error
from app.http import json_body
from app.schedules import firing, services
from app.schedules.schemas import ScheduleCreateRequest
from app.tenants.auth import current_tenant_id

bp = Blueprint("schedules", __name__)


@bp.post("/v1/schedules")
def create_schedule():
    raw = json_body()
    if not isinstance(raw, dict):
        raise bad_request("The request body must be a JSON object.")
    try:
        body = ScheduleCreateRequest.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
    session = db_session()
    poolq = current_app.extensions["poolq"]
    schedule = services.create_schedule(session, current_tenant_id(), body, poolq.served, utcnow(),
                                        poolq.settings.max_schedules_per_tenant)
    session.commit()
    return jsonify(services.schedule_resource(schedule))


@bp.get("/v1/schedules")
def list_schedules():
    rows, has_more = services.list_schedules(db_session(), current_tenant_id(), request.args.to_dict())
    data = [services.schedule_resource(s) for s in rows]
    return jsonify({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None, "has_more": has_more})


@bp.get("/v1/schedules/<schedule_id>")
def get_schedule(schedule_id: str):
    return jsonify(services.schedule_resource(services.get_schedule(db_session(), schedule_id, current_tenant_id())))


@bp.delete("/v1/schedules/<schedule_id>")
def delete_schedule(schedule_id: str):
    session = db_session()
    services.delete_schedule(session, schedule_id, current_tenant_id())
    session.commit()
    return jsonify({"id": schedule_id, "object": "schedule", "deleted": True})


@bp.post("/v1/schedules/<schedule_id>/pause")
def pause_schedule(schedule_id: str):
    session = db_session()
    schedule = services.pause_schedule(session, schedule_id, current_tenant_id())
    session.commit()
    return jsonify(services.schedule_resource(schedule))


@bp.post("/v1/schedules/<schedule_id>/resume")
def resume_schedule(schedule_id: str):
    session = db_session()
    schedule = services.resume_schedule(session, schedule_id, current_tenant_id(), utcnow())
    session.commit()
    return jsonify(services.schedule_resource(schedule))


@bp.post("/v1/schedules/<schedule_id>/trigger")
def trigger_schedule(schedule_id: str):
    """Fire now. The next slot stays as it is: a trigger is an extra firing, not the next one brought forward."""
    poolq = current_app.extensions["poolq"]
    session = db_session()
    schedule = services.get_schedule(session, schedule_id, current_tenant_id())
    batch = firing.fire(session, schedule, utcnow(), poolq.served, poolq.settings.max_file_bytes)
    session.commit()
    dispatch.send_validate(poolq.celery, batch.id)  # refused: the batch sweeper re-sends it
    return jsonify(batch_resource(batch))
