"""Input lines in, output lines out: OpenAI batch input, `vllm run-batch` output.

Input: `{"custom_id", "method", "url", "body"}` per line. Each body is
validated with the HTTP routes' own parser, so a line fails with exactly the
status and message the route would answer. Output lines follow run-batch:

    {"id": "vllm-<16hex>", "custom_id": ..., "error": null,
     "response": {"status_code": 200, "request_id": "vllm-batch-<16hex>", "body": {...}}}

and for a failed line `body` is null and `error` is vLLM's error object
(`{"error": {message, type, param, code}}`), or a plain string for a URL
poolq does not serve, as run-batch writes it.

How strict about `url`: a line's URL must be one of poolq's pooling routes
and name the same kind of endpoint as the batch (aliases are equal, so a
`/v1/score` batch accepts `/score` lines, and a `/v1/rerank` batch accepts
`/rerank` and `/v2/rerank`). Unlike OpenAI, a mismatched line fails alone (in
the error file) rather than failing the batch; `method` is not checked, as in
run-batch.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from app import jsonparse
from app.errors import APIError, bad_request
from app.pooling.requests import parse
from app.pooling.routes import ROUTES as URL_ENDPOINTS  # URL -> endpoint kind, as the HTTP routes
from app.served import ServedModels

MAX_FILE_ERRORS = 100  # listed in a failed batch's `errors`


@dataclass
class ParsedFile:
    valid: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)  # line_no, custom_id, model, req
    errors: list[tuple[int, str]] = field(default_factory=list)  # line_no, serialized output line
    problems: list[dict[str, Any]] = field(default_factory=list)  # OpenAI BatchError entries
    total: int = 0
    fatal: str | None = None


def _hex16() -> str:
    return secrets.token_hex(8)


def ok_line(custom_id: str | None, body: dict[str, Any]) -> str:
    return json.dumps({"id": f"vllm-{_hex16()}", "custom_id": custom_id,
                       "response": {"status_code": 200, "request_id": f"vllm-batch-{_hex16()}", "body": body},
                       "error": None})


def error_line(custom_id: str | None, status: int, error: Any) -> str:
    return json.dumps({"id": f"vllm-{_hex16()}", "custom_id": custom_id,
                       "response": {"status_code": status, "request_id": f"vllm-batch-{_hex16()}", "body": None},
                       "error": error})


def unsupported_url(url: Any) -> str:
    return (f"URL {url} is not a supported endpoint. Supported endpoints: "
            f"{', '.join(URL_ENDPOINTS)}.")


def parse_file(content: bytes, endpoint: str, served: ServedModels, max_items: int) -> ParsedFile:
    out = ParsedFile()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        out.fatal = "The input file is not UTF-8 text, so it is not JSONL."
        return out
    kind = URL_ENDPOINTS[endpoint]
    seen: set[str] = set()
    decoded = 0
    line_no = 0
    for raw in text.split("\n"):
        if not raw.strip():
            continue  # blank lines (a trailing newline) are not requests
        no, line_no = line_no, line_no + 1
        try:
            item = jsonparse.loads(raw)  # refuses too-deep nesting, NaN: the line is invalid, not a crash
            decoded += 1
        except ValueError:
            out.errors.append((no, error_line(None, 400, _error(bad_request(f"Line {no + 1} is not valid JSON.")))))
            _problem(out, "invalid_json_line", f"Line {no + 1} is not valid JSON.", no)
            continue
        try:
            custom_id, model, request = _line(item, kind, served, max_items, seen)
        except _LineError as exc:
            out.errors.append((no, error_line(exc.custom_id, exc.status, exc.error)))
            _problem(out, exc.code, exc.message, no)
            continue
        out.valid.append((no, custom_id, model, request))
    out.total = line_no
    if decoded == 0:
        out.fatal = "The input file has no JSON line: it is not JSONL."
    elif not out.valid:
        out.fatal = "The input file has no valid request line."
    return out


class _LineError(Exception):
    def __init__(self, custom_id: str | None, status: int, error: Any, code: str, message: str):
        super().__init__(message)
        self.custom_id, self.status, self.error, self.code, self.message = custom_id, status, error, code, message


def _error(exc: APIError) -> dict[str, Any]:
    return exc.body()


def _line(item: Any, kind: str, served: ServedModels, max_items: int, seen: set[str]):
    if not isinstance(item, dict):
        exc = bad_request("A batch line must be a JSON object with custom_id, method, url and body.")
        raise _LineError(None, 400, _error(exc), "invalid_request", exc.message)
    custom_id = item.get("custom_id")
    for name, types in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
        if not isinstance(item.get(name), types):
            exc = bad_request(f"`{name}` is missing or not a {'string' if types is str else 'JSON object'}.", name)
            raise _LineError(custom_id if isinstance(custom_id, str) else None, 400, _error(exc),
                             "missing_required_parameter", exc.message)
    if custom_id in seen:
        exc = bad_request(f"custom_id {custom_id!r} is used by an earlier line; custom_id must be unique.",
                          "custom_id")
        raise _LineError(custom_id, 400, _error(exc), "duplicate_custom_id", exc.message)
    seen.add(custom_id)
    url = item["url"]
    if url not in URL_ENDPOINTS:
        raise _LineError(custom_id, 400, unsupported_url(url), "invalid_url", unsupported_url(url))
    if URL_ENDPOINTS[url] != kind:
        message = f"URL {url} does not match the batch's endpoint (a {kind} endpoint)."
        raise _LineError(custom_id, 400, message, "mismatched_endpoint", message)
    try:
        model, request = parse(URL_ENDPOINTS[url], item["body"], served, max_items)
    except APIError as exc:
        raise _LineError(custom_id, exc.status, _error(exc), "invalid_request", exc.message) from None
    return custom_id, model.name, request


def _problem(out: ParsedFile, code: str, message: str, line_no: int) -> None:
    if len(out.problems) < MAX_FILE_ERRORS:
        out.problems.append({"code": code, "message": message, "param": None, "line": line_no + 1})
