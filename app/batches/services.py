"""Batches as the API sees them: create, read, list, cancel. Functions flush; callers commit."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.batches.files import epoch, get_file
from app.batches.lines import URL_ENDPOINTS
from app.batches.records import Batch, BatchChunk
from app.db.base import utcnow
from app.db.paging import newest_first, page_limit
from app.errors import APIError, bad_request, not_found
from app.webhooks.services import validate_subscription

WINDOW_RE = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 7 * 86400
MAX_PAGE = 100
BATCH_ID = re.compile(r"^batch_[0-9a-f]{24}$")
# A batch's webhook events: its final states (app/batches/events.py).
BATCH_EVENTS = ("completed", "failed", "expired", "cancelled")
MAX_WEBHOOK_URL = 2048


def completion_window_s(raw: Any) -> int:
    """OpenAI accepts only "24h"; poolq also takes `<N>s|m|h|d` up to 7 days (a nightly run may want 12h)."""
    match = WINDOW_RE.match(raw) if isinstance(raw, str) else None
    seconds = int(match.group(1)) * WINDOW_UNITS[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_WINDOW_S:
        raise bad_request("completion_window must be '24h' (or <N>s, <N>m, <N>h, <N>d up to 7 days)",
                          "completion_window")
    return seconds


def _metadata(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if (not isinstance(raw, dict) or len(raw) > 16
            or any(not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512
                   or "\x00" in k or "\x00" in v for k, v in raw.items())):
        raise bad_request("metadata must be an object of at most 16 string keys (64 chars) and string values "
                          "(512 chars)", "metadata")
    return raw


def _subscription(session: Session, tenant_id: uuid.UUID, body: dict[str, Any],
                  settings: Any) -> tuple[str | None, list[str] | None]:
    """`webhook` and `webhook_events_filter`, checked as a job's are (URL safety, endpoints disabled by a 410)."""
    url = body.get("webhook")
    if url is not None and (not isinstance(url, str) or not 0 < len(url) <= MAX_WEBHOOK_URL):
        raise bad_request(f"webhook must be a URL of at most {MAX_WEBHOOK_URL} characters", "webhook")
    return validate_subscription(url, body.get("webhook_events_filter"), settings, session=session,
                                 tenant_id=tenant_id, known=BATCH_EVENTS, default=BATCH_EVENTS)


def create_batch(session: Session, tenant_id: uuid.UUID, body: Any, settings: Any = None) -> Batch:
    """`settings` (the app's) is needed only when the body subscribes a webhook."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str) or endpoint not in URL_ENDPOINTS:
        raise bad_request(f"endpoint must be one of {list(URL_ENDPOINTS)}", "endpoint")
    window = body.get("completion_window", "24h")
    seconds = completion_window_s(window)
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str):
        raise bad_request("input_file_id is required", "input_file_id")
    file = get_file(session, file_id, tenant_id)
    if file.purpose != "batch":
        raise bad_request(f"File {file_id} has purpose {file.purpose!r}; a batch input needs purpose 'batch'.",
                          "input_file_id")
    meta = _metadata(body.get("metadata"))
    webhook_url, webhook_events = _subscription(session, tenant_id, body, settings)
    now = utcnow()
    batch = Batch(id=f"batch_{secrets.token_hex(12)}", tenant_id=tenant_id, endpoint=endpoint,
                  input_file_id=file.id, completion_window=window, status="validating", meta=meta,
                  webhook_url=webhook_url, webhook_events=webhook_events, created_at=now,
                  expires_at=now + dt.timedelta(seconds=seconds))
    session.add(batch)
    session.flush()
    return batch


def batch_kept(sessions: sessionmaker[Session], batch_id: str) -> bool:
    """Read on a connection of its own: is the batch committed?"""
    with sessions() as session:
        return session.scalar(select(Batch.id).where(Batch.id == batch_id)) is not None


def get_batch(session: Session, batch_id: str, tenant_id: uuid.UUID) -> Batch:
    batch = session.get(Batch, batch_id) if BATCH_ID.match(batch_id) else None
    if batch is None or batch.tenant_id != tenant_id:
        raise not_found(f"No such Batch object: {batch_id}")
    return batch


def batch_ended(sessions: sessionmaker[Session], batch_id: str) -> bool:
    """Whether the batch is in a final state, read in a session of its own (a fresh snapshot)."""
    with sessions() as session:
        return session.scalar(select(Batch.status).where(Batch.id == batch_id)) in (None, *BATCH_EVENTS)


def list_batches(session: Session, tenant_id: uuid.UUID, args: dict[str, str]) -> tuple[list[Batch], bool]:
    """Newest first; `after` is the last id of the previous page, as OpenAI's cursor pages send it."""
    limit = page_limit(args, most=MAX_PAGE)
    anchor = get_batch(session, args["after"], tenant_id) if args.get("after") else None
    return newest_first(session, select(Batch).where(Batch.tenant_id == tenant_id), Batch, anchor, limit)


def cancel_batch(session: Session, batch_id: str, tenant_id: uuid.UUID) -> Batch:
    """validating or in_progress -> cancelling. Chunks not yet started never will;
    running ones finish and keep their lines (cancel stops at chunk boundaries),
    then the finalize step writes the partial files and sets `cancelled`."""
    batch = get_batch(session, batch_id, tenant_id)
    now = utcnow()
    changed = session.execute(
        update(Batch).where(Batch.id == batch.id, Batch.status.in_(("validating", "in_progress")))
        .values(status="cancelling", cancelling_at=now)).rowcount
    if changed:
        session.execute(update(BatchChunk).where(BatchChunk.batch_id == batch.id, BatchChunk.status == "pending")
                        .values(status="cancelled", finished_at=now))
    session.refresh(batch)
    if not changed and batch.status not in ("cancelling", "cancelled"):
        raise APIError(409, f"Batch {batch_id} is {batch.status}; only validating or in_progress batches can be "
                       "cancelled.", "ConflictError")
    return batch


def batch_resource(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": batch.errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": epoch(batch.created_at),
        "in_progress_at": epoch(batch.in_progress_at),
        "expires_at": epoch(batch.expires_at),
        "finalizing_at": epoch(batch.finalizing_at),
        "completed_at": epoch(batch.completed_at),
        "failed_at": epoch(batch.failed_at),
        "expired_at": epoch(batch.expired_at),
        "cancelling_at": epoch(batch.cancelling_at),
        "cancelled_at": epoch(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.meta,
        # poolq's, beside OpenAI's fields (its client keeps unknown fields).
        "webhook": batch.webhook_url,
        "webhook_events_filter": batch.webhook_events,
    }
