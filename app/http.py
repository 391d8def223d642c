"""Request parsing shared by every JSON route, with vLLM's error wording."""

from __future__ import annotations

from typing import Any

from flask import request

from app import jsonparse
from app.errors import APIError


def json_body() -> Any:
    """The parsed JSON body, or a 400 in vLLM's shape.

    vLLM answers a wrong Content-Type with 400 (not 415) and this message.
    Whatever the parser refuses (bad syntax, bad UTF-8, NaN, nesting past
    jsonparse.MAX_DEPTH) is the same 400: the body is the client's fault.
    """
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise APIError(400, "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
                       "Bad Request")
    raw = request.get_data(cache=True)
    try:
        return jsonparse.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, jsonparse.TooDeep
        raise APIError(400, f"1 validation error:\n  {{'type': 'json_invalid', 'loc': 'body', 'msg': 'JSON decode error', 'ctx': {{'error': {str(exc)!r}}}}}",
                       "Bad Request", "body") from None
