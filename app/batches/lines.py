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

from dataclasses import dataclass
from typing import Any, Iterator

from app import jsonparse, jsontext
from app.errors import APIError, bad_request
from app.pooling.protocol import random_request_id
from app.pooling.requests import parse
from app.pooling.routes import ROUTES as URL_ENDPOINTS  # URL -> endpoint kind, as the HTTP routes
from app.served import ServedModels

MAX_FILE_ERRORS = 100  # listed in a failed batch's `errors`


@dataclass(frozen=True)
class ParsedLine:
    """One input line: valid (model and request set) or bad (its output line and problem set)."""
    no: int
    custom_id: str | None = None
    model: str | None = None
    request: dict[str, Any] | None = None
    error: str | None = None  # the serialized output line of a bad line
    problem: dict[str, Any] | None = None  # its OpenAI BatchError entry


def ok_line(custom_id: str | None, body: dict[str, Any]) -> str:
    return _output_line(custom_id, 200, body, None)


def error_line(custom_id: str | None, status: int, error: Any) -> str:
    return _output_line(custom_id, status, None, error)


def _output_line(custom_id: str | None, status: int, body: dict[str, Any] | None, error: Any) -> str:
    return jsontext.dumps({"id": f"vllm-{random_request_id()}", "custom_id": custom_id,
                           "response": {"status_code": status, "request_id": f"vllm-batch-{random_request_id()}",
                                        "body": body},
                           "error": error})


def unsupported_url(url: Any) -> str:
    return (f"URL {url} is not a supported endpoint. Supported endpoints: "
            f"{', '.join(URL_ENDPOINTS)}.")


def decode(content: bytes) -> str | None:
    """The file as text; None if it is not UTF-8 (a fatal error: it is not JSONL)."""
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return None


NOT_UTF8 = "The input file is not UTF-8 text, so it is not JSONL."
NO_JSON_LINE = "The input file has no JSON line: it is not JSONL."
NO_VALID_LINE = "The input file has no valid request line."


def request_lines(text: str) -> list[str]:
    """The file's lines that are requests: blank lines (a trailing newline) are not."""
    return [raw for raw in text.split("\n") if raw.strip()]


def parse_lines(raws: list[str], endpoint: str, served: ServedModels, max_items: int) -> Iterator[ParsedLine]:
    """Each request line in order, parsed. Deterministic (a duplicate custom_id is the later line's
    error), so a validation that resumes after a crash derives the same lines again."""
    kind = URL_ENDPOINTS[endpoint]
    seen: set[str] = set()
    for no, raw in enumerate(raws):
        try:
            item = jsonparse.loads(raw)  # refuses too-deep nesting, NaN: the line is invalid, not a crash
        except ValueError:
            message = f"Line {no + 1} is not valid JSON."
            yield ParsedLine(no, error=error_line(None, 400, _error(bad_request(message))),
                             problem=_problem("invalid_json_line", message, no))
            continue
        try:
            custom_id, model, request = _line(item, kind, served, max_items, seen)
        except _LineError as exc:
            yield ParsedLine(no, exc.custom_id, error=error_line(exc.custom_id, exc.status, exc.error),
                             problem=_problem(exc.code, exc.message, no))
            continue
        yield ParsedLine(no, custom_id, model, request)


def is_json(line: ParsedLine) -> bool:
    return line.problem is None or line.problem["code"] != "invalid_json_line"


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


def _problem(code: str, message: str, line_no: int) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line_no + 1}
