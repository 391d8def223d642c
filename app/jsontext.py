"""JSON text out: orjson where it can, the standard library where it cannot.

Every stored request, result and batch line is written as JSON text, and the
big ones are written on a worker's or the API's critical path: a 5,000-text
job's result took json.dumps 19 ms and orjson 1 ms, its request 17 and 2, a
batch output line 23 us and 8 (with the ids and the body). orjson writes
compact JSON (what vLLM's own responses and batch output lines are: pydantic's
`model_dump_json`) and non-ASCII characters as UTF-8 instead of escapes; both
are the same JSON to any reader. What orjson refuses, json.dumps writes as
before: an integer past 64 bits, a string with a lone surrogate (json.loads
takes "\\ud800"; vLLM accepts such text), a type orjson does not know. orjson
writes NaN and infinities as null, where json.dumps wrote tokens that are not
JSON (Postgres refused them).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Dict keys that are not strings are written as json.dumps writes them (as strings).
_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value)
