"""`/v1/files` and `/v1/batches`, shaped like OpenAI's, so the `openai` client works unchanged."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from app.batches import dispatch, events, files, services
from app.db.commit import commit_kept
from app.db.request import db_session
from app.errors import bad_request
from app.http import json_body
from app.jobs.submission import long_poll
from app.tenants.auth import current_tenant_id
from app.webhooks.services import delivery_resource

bp = Blueprint("batches", __name__)


@bp.post("/v1/files")
def upload_file():
    settings = current_app.extensions["poolq"].settings
    upload = request.files.get("file")
    purpose = request.form.get("purpose")
    content = upload.read(settings.max_file_bytes + 1) if upload is not None else b""
    files.check_upload(purpose, upload.filename if upload is not None else None, settings.max_file_bytes,
                       len(content))
    expires_after_s = files.parse_expires_after(request.form, settings.file_expiry_s)
    session = db_session()
    file = files.create_file(session, current_tenant_id(), upload.filename, purpose, content, expires_after_s)
    session.commit()
    return jsonify(files.file_resource(file))


@bp.get("/v1/files")
def list_files():
    try:
        limit = int(request.args.get("limit", 1000))
    except ValueError:
        raise bad_request("limit must be an integer", "limit") from None
    if not 1 <= limit <= 10000:
        raise bad_request("limit must be between 1 and 10000", "limit")
    rows, has_more = files.list_files(db_session(), current_tenant_id(), request.args.get("purpose"), limit,
                                      request.args.get("after"))
    return jsonify(_page([files.file_resource(f) for f in rows], has_more))


@bp.get("/v1/files/<file_id>")
def get_file(file_id: str):
    return jsonify(files.file_resource(files.get_file(db_session(), file_id, current_tenant_id())))


@bp.get("/v1/files/<file_id>/content")
def file_content(file_id: str):
    session = db_session()
    file = files.get_file(session, file_id, current_tenant_id())
    return Response(files.file_content(session, file), mimetype="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{file.filename}"'})


@bp.delete("/v1/files/<file_id>")
def delete_file(file_id: str):
    session = db_session()
    files.delete_file(session, file_id, current_tenant_id())
    session.commit()
    return jsonify({"id": file_id, "object": "file", "deleted": True})


@bp.post("/v1/batches")
def create_batch():
    poolq = current_app.extensions["poolq"]
    session = db_session()
    batch = services.create_batch(session, current_tenant_id(), json_body(), poolq.settings)
    # The answer is the truth: a kept batch is a 200 (OpenAI's code) whatever happens after
    # the commit; a 503 only while nothing is kept.
    commit_kept(session, lambda: services.batch_kept(poolq.request_session_factory, batch.id), f"batch {batch.id}")
    # A refused send needs no undo: the sweeper sends a validation left POOLQ_REQUEUE_AFTER_S.
    dispatch.send_validate(poolq.celery, batch.id)
    return jsonify(services.batch_resource(batch))


@bp.get("/v1/batches")
def list_batches():
    rows, has_more = services.list_batches(db_session(), current_tenant_id(), request.args.to_dict())
    return jsonify(_page([services.batch_resource(b) for b in rows], has_more))


@bp.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str):
    """With `Prefer: wait=N` a batch not yet ended is answered when it ends (the worker announces
    it), or after N seconds as it then is (submission.long_poll)."""
    sessions = current_app.extensions["poolq"].request_session_factory
    session = db_session()
    batch = services.get_batch(session, batch_id, current_tenant_id())
    if batch.status not in services.BATCH_EVENTS:
        key = batch.id  # read before long_poll's rollback, which expires the row
        if long_poll(session, key, lambda: services.batch_ended(sessions, key)):
            batch = services.get_batch(session, batch_id, current_tenant_id())
    return jsonify(services.batch_resource(batch))


@bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    poolq = current_app.extensions["poolq"]
    session = db_session()
    batch = services.cancel_batch(session, batch_id, current_tenant_id())
    session.commit()
    if batch.status == "cancelling":
        dispatch.send_finalize(poolq.celery, batch.id)  # closes it at once if no chunk is running
    return jsonify(services.batch_resource(batch))


@bp.get("/v1/batches/<batch_id>/webhook-deliveries")
def list_webhook_deliveries(batch_id: str):
    deliveries = events.batch_deliveries(db_session(), current_tenant_id(), batch_id)
    return jsonify({"object": "list", "data": [delivery_resource(d) for d in deliveries]})


def _page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
