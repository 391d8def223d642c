"""Files: upload, describe, download, delete. Functions flush; callers commit.

The bytes are stored in Postgres (bytea), so a deployment keeps one system of
record; POOLQ_MAX_FILE_BYTES bounds an upload (OpenAI's limit for batch
input is 200 MB, the default here too).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from app.batches.records import BatchOutput, File
from app.db.base import as_utc, utcnow
from app.db.driver import as_sqlalchemy_raises
from app.errors import APIError, bad_request, not_found

PURPOSES = ("batch",)  # what clients may upload; outputs are "batch_output"
FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


# OpenAI's bounds for `expires_after[seconds]`: one hour to thirty days.
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600


def parse_expires_after(form: Mapping[str, str], default_s: int) -> int | None:
    """Seconds after upload at which the file expires (None: never), from OpenAI's
    multipart fields `expires_after[anchor]` and `expires_after[seconds]`."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return default_s or None
    if anchor != "created_at":
        raise bad_request("expires_after[anchor] must be 'created_at'", "expires_after")
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        raise bad_request(f"expires_after[seconds] must be an integer from {MIN_EXPIRY_S} to {MAX_EXPIRY_S}",
                          "expires_after")
    return value


def create_file(session: Session, tenant_id: uuid.UUID, filename: str, purpose: str, content: bytes,
                expires_after_s: int | None = None) -> File:
    now = utcnow()
    file = File(id=new_file_id(), tenant_id=tenant_id, filename=filename.replace("\x00", "")[:255] or "upload.jsonl",
                purpose=purpose, size=len(content), content=content, created_at=now,
                expires_at=now + dt.timedelta(seconds=expires_after_s) if expires_after_s else None)
    session.add(file)
    session.flush()
    return file


def check_upload(purpose: str | None, filename: str | None, max_bytes: int, size: int) -> None:
    if purpose not in PURPOSES:
        raise bad_request(f"purpose must be one of {list(PURPOSES)}", "purpose")
    if not filename:
        raise bad_request("Send the file as the multipart field `file`.", "file")
    if size > max_bytes:
        raise APIError(413, f"The file is larger than {max_bytes} bytes.", "RequestEntityTooLarge", "file")


def get_file(session: Session, file_id: str, tenant_id: uuid.UUID) -> File:
    """The tenant's file; another tenant's is as absent as a missing one."""
    # Checked before the query: an arbitrary path segment (a NUL, say) never reaches Postgres.
    file = session.get(File, file_id) if FILE_ID.match(file_id) else None
    if file is None or file.tenant_id != tenant_id:
        raise not_found(f"No such File object: {file_id}")
    return file


def file_content(session: Session, file: File) -> bytes:
    return read_content(session, file.id) or b""


def read_content(session: Session, file_id: str) -> bytes | None:
    """A file's bytes (None if it is gone): an upload's stored bytes, or the batch lines a
    batch's output or error file names, joined. On Postgres in binary form: as text, a bytea
    travels hex-encoded, twice its size, and both ends encode and decode it (a 4 MB batch input:
    ~30 ms idle, and 64-170 ms on a worker whose other threads were busy; binary: 10-47 ms)."""
    connection = session.connection()
    if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
        row = session.execute(select(File.content, File.batch_id, File.batch_ok).where(File.id == file_id)).first()
        if row is None or row.content is not None:
            return None if row is None else row.content
        lines = session.scalars(select(BatchOutput.line).where(BatchOutput.batch_id == row.batch_id,
                                                                BatchOutput.ok == row.batch_ok)
                                .order_by(BatchOutput.line_no))
        return "".join(line + "\n" for line in lines).encode()
    # On the driver's cursor (binary results), its errors raised as SQLAlchemy's: a lost connection
    # is a 503 in the API and a retry in a task, as for any other statement.
    with as_sqlalchemy_raises(connection, _CONTENT) as raw, raw.cursor(binary=True) as cursor:
        row = cursor.execute(_CONTENT, {"id": file_id}).fetchone()
    return None if row is None else bytes(row[0] or b"")


# The lines are joined by the server (string_agg in line order): fetched into Python and joined
# there, a 100,000-line output (47 MB) took 638 ms, 422 of them the reader's CPU; joined by the
# server 306 (5,000 lines: 25 ms, 20 here; 2 vCPUs).
_CONTENT = """
SELECT coalesce(files.content, (
    SELECT convert_to(string_agg(line, E'\\n' ORDER BY line_no) || E'\\n', 'UTF8') FROM batch_outputs
    WHERE batch_outputs.batch_id = files.batch_id AND batch_outputs.ok = files.batch_ok))
FROM files WHERE id = %(id)s
"""


def delete_file(session: Session, file_id: str, tenant_id: uuid.UUID) -> None:
    file = get_file(session, file_id, tenant_id)
    session.execute(delete(File).where(File.id == file.id))


def list_files(session: Session, tenant_id: uuid.UUID, purpose: str | None, limit: int,
               after: str | None) -> tuple[list[File], bool]:
    query = select(File).where(File.tenant_id == tenant_id)
    if purpose not in (None, "batch", "batch_output"):
        raise bad_request("purpose must be 'batch' or 'batch_output'", "purpose")
    if purpose:
        query = query.where(File.purpose == purpose)
    if after:
        anchor = get_file(session, after, tenant_id)
        query = query.where(tuple_(File.created_at, File.id) < tuple_(anchor.created_at, anchor.id))
    rows = list(session.scalars(query.order_by(File.created_at.desc(), File.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def epoch(value: dt.datetime | None) -> int | None:
    value = as_utc(value)
    return None if value is None else int(value.timestamp())


def file_resource(file: File) -> dict[str, Any]:
    return {"id": file.id, "object": "file", "bytes": file.size, "created_at": epoch(file.created_at),
            "filename": file.filename, "purpose": file.purpose, "status": "processed", "status_details": None,
            "expires_at": epoch(file.expires_at)}
