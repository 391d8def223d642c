"""vLLM's error shape for every failure: {"error": {message, type, param, code}}.

The HTTP status always equals `code`. Types follow vLLM 0.33's mapping
(reference §2): BadRequestError, NotFoundError, and so on; body validation
errors, which vLLM types "Bad Request", are BadRequestError here too, with a
message that names the field.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _default_type(status)
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {**error_body(self.message, self.type, self.param, self.status), **self.extra}


def error_body(message: str, type: str, param: str | None, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "BadRequestError", param)


def not_found(message: str) -> APIError:
    return APIError(404, message, "NotFoundError")


def model_not_found(name: str) -> APIError:
    return not_found(f"The model `{name}` does not exist.")


def _default_type(status: int) -> str:
    return {400: "BadRequestError", 404: "NotFoundError", 409: "ConflictError", 413: "RequestEntityTooLarge",
            422: "UnprocessableEntityError", 429: "TooManyRequests", 501: "NotImplementedError",
            503: "ServiceUnavailable"}.get(status, "InternalServerError" if status >= 500 else "BadRequestError")


def validation_error(exc: ValidationError, prefix: str = "body") -> APIError:
    """pydantic's errors as one readable sentence per field, typed as vLLM types a bad request.

    vLLM answers body validation errors with pydantic's raw dump under the
    type "Bad Request"; poolq names each field, says what it wanted and what
    it got, and keeps pydantic's error type in brackets (vLLM's own tests look
    for e.g. `literal_error` and the bad value in the message).
    """
    errors = exc.errors(include_url=False, include_context=False)
    by_field: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for err in errors:
        path = _field_path(err["loc"])
        by_field.setdefault(path.split(".", 1)[0], []).append((path, err))
    parts = [_describe_field(field, found) for field, found in list(by_field.items())[:10]]
    first = next(iter(by_field.values()), None)
    param = f"{prefix}.{first[0][0]}" if first and first[0][0] else prefix
    return bad_request("Invalid request: " + "; ".join(parts) + ".", param)


def _field_path(loc: tuple) -> str:
    """The field as the client wrote it: pydantic's union-branch tags ('str', 'list[int]', 'ScoreContent') dropped."""
    kept = [str(p) for p in loc if not (isinstance(p, str) and _is_union_tag(p))]
    return ".".join(kept)


def _is_union_tag(part: str) -> bool:
    return (part in ("str", "int", "float", "bool", "list", "dict", "none")
            or any(c in part for c in "[]-") or part[:1].isupper())


def _describe_field(field: str, found: list[tuple[str, dict[str, Any]]]) -> str:
    if len(found) == 1:
        path, err = found[0]
        return _describe(path or field, err)
    # A union field (input, documents, ...): one line per branch would bury the point.
    value = found[0][1].get("input")
    reasons = list(dict.fromkeys(f"{err['msg']} [{err['type']}]" for _, err in found))[:4]
    return f"`{field}` is none of its accepted forms (got {_short(value)}): " + ", ".join(reasons)


def _describe(path: str, err: dict[str, Any]) -> str:
    if err["type"] == "missing":
        return f"`{path}` is required [missing]"
    return f"`{path}`: {err['msg']}, got {_short(err.get('input'))} [{err['type']}]"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _service_unavailable(message: str, retry_after: int = 5):
    response = jsonify(error_body(message, "ServiceUnavailable", None, 503))
    response.status_code = 503
    response.headers["Retry-After"] = str(retry_after)
    return response


def service_unavailable(message: str, retry_after: int = 5) -> APIError:
    return APIError(503, message, "ServiceUnavailable", headers={"Retry-After": str(retry_after)})


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(exc: APIError):
        response = jsonify(exc.body())
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Unknown routes answer FastAPI's `detail` (what vLLM clients see) and
        # vLLM's error object side by side, so either kind of client can read it.
        code = exc.code or 500
        body = error_body(exc.name, _default_type(code), None, code)
        body["detail"] = exc.name
        response = jsonify(body)
        response.status_code = code
        return response

    @app.errorhandler(DBAPIError)
    def _database_unavailable(exc: DBAPIError):
        # The system of record is unreachable or refusing: nothing was
        # accepted, so the client should retry, not treat it as a bug.
        if not isinstance(exc, (OperationalError, InterfaceError)) and not exc.connection_invalidated:
            return _unexpected(exc)
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return _service_unavailable("The database is unavailable; retry shortly.")

    @app.errorhandler(PoolTimeout)
    def _pool_exhausted(exc: PoolTimeout):
        # Every pooled connection is busy (the database is hung or slow):
        # nothing was accepted, retry shortly.
        log.warning("no database connection free: %s", exc)
        return _service_unavailable("The database is busy; retry shortly.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        response = jsonify(error_body("Internal server error", "InternalServerError", None, 500))
        response.status_code = 500
        return response
