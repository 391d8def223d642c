"""Keyset pages, newest first, as the list routes (jobs, batches, schedules) serve them.

A page ends at the last row's (created_at, id), so rows created meanwhile
never shift a page, and no page is read twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from app.errors import bad_request

MAX_PAGE = 1000


def page_limit(args: dict[str, str], default: int = 20, most: int = MAX_PAGE) -> int:
    try:
        limit = int(args.get("limit", default))
    except ValueError:
        raise bad_request("limit must be an integer", "limit") from None
    if not 1 <= limit <= most:
        raise bad_request(f"limit must be between 1 and {most}", "limit")
    return limit


def newest_first(session: Session, query: Select, entity: Any, anchor: Any | None, limit: int) -> tuple[list, bool]:
    """One page of `query` (rows of `entity`) after `anchor` (the previous page's last row); and whether more follow."""
    if anchor is not None:
        query = query.where(tuple_(entity.created_at, entity.id) < tuple_(anchor.created_at, anchor.id))
    rows = list(session.scalars(query.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
