"""Strict JSON for untrusted bodies and lines: what json.loads takes, minus what breaks later.

json.loads alone accepts three things that turn into a 500 further on:
- nesting deep enough to exhaust the interpreter's stack (RecursionError in
  the parser at ~1000 levels, or later in pydantic or json.dumps at less);
- NaN and Infinity (not JSON; Postgres and most clients refuse them back);
- numbers too large for a float (`1e999` parses as inf).
`loads` refuses all three with a ValueError, so every caller's existing
"not valid JSON" path answers them.
"""

from __future__ import annotations

import json
import math
from typing import Any

# The deepest legitimate body is a chat request (messages, content parts) with
# tool schemas inside a schedule: well under 20 levels. 64 leaves room for
# nested metadata while staying far from the ~1000 frames Python allows.
MAX_DEPTH = 64


class TooDeep(ValueError):
    """JSON nested deeper than MAX_DEPTH."""


def loads(raw: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads does
    try:
        value = _DECODER.decode(raw)
    except RecursionError:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels") from None
    # Containers nest no deeper than the text has opening brackets (those inside strings
    # included): a body with few brackets, such as any batch line, needs no walk.
    if raw.count("[") + raw.count("{") > max_depth and not within_depth(value, max_depth):
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


def within_depth(value: Any, max_depth: int) -> bool:
    """Whether containers nest at most `max_depth` deep; iterative, level by level.

    A level whose members are all scalars (a 100k-text `input`) is checked by
    `set(map(type, ...))`, which runs in C: the walk costs a few ms even for
    the largest bodies. json.loads only produces exact dicts and lists.
    """
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return False
        below = []
        for container in level:
            members = container.values() if type(container) is dict else container
            kinds = set(map(type, members))
            if dict in kinds or list in kinds:
                below.extend(m for m in members if type(m) is dict or type(m) is list)
        level = below
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


# One decoder for every call: json.loads with hooks builds a new one each time (~5 us,
# which a 5000-line batch file pays per line).
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
