"""Request parsing shared by every JSON route, with vLLM's error wording."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from app.errors import APIError


def json_body() -> Any:
    """The parsed JSON body, or a 400 in vLLM's shape.

    vLLM answers a wrong Content-Type with 400 (not 415) and this message.
    """
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise APIError(400, "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
                       "Bad Request")
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"1 validation error:\n  {{'type': 'json_invalid', 'loc': 'body', 'msg': 'JSON decode error', 'ctx': {{'error': {str(exc)!r}}}}}",
                       "Bad Request", "body") from None
