"""Request parsing shared by every JSON route, with vLLM's error wording."""

from __future__ import annotations

from typing import Any

from flask import request

from app import jsonparse
from app.errors import bad_request


def json_body() -> Any:
    """The parsed JSON body, or a 400 in vLLM's shape.

    vLLM answers a wrong Content-Type with 400 (not 415) and this message.
    Whatever the parser refuses (bad syntax, bad UTF-8, NaN, nesting past
    jsonparse.MAX_DEPTH) is the same 400: the body is the client's fault.
    Both are BadRequestError, as every other validation error here.
    """
    mimetype = request.mimetype
    if mimetype != "application/json":
        sent = f"Content-Type was {mimetype!r}" if mimetype else "no Content-Type was sent"
        raise bad_request(f"Unsupported Media Type: Only 'application/json' is allowed ({sent}).", "Content-Type")
    raw = request.get_data(cache=True)
    try:
        return jsonparse.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, jsonparse.TooDeep
        raise bad_request(f"The body is not valid JSON: {exc} [json_invalid]", "body") from None


def preferred_wait_s(most_s: float) -> float:
    """RFC 7240's `Prefer: wait=N`: how many seconds the client is willing to wait for the
    resource to change, capped at `most_s`; 0 when it did not ask. A preference the server
    cannot read is ignored, as the RFC has it, not refused."""
    for token in request.headers.get("Prefer", "").split(","):
        name, _, value = token.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return 0.0
            return min(max(seconds, 0.0), most_s) if seconds == seconds else 0.0  # NaN: ignored
    return 0.0
