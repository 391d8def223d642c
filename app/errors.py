"""vLLM's error shape for every failure: {"error": {message, type, param, code}}.

The HTTP status always equals `code`. Types follow vLLM 0.33's mapping
(reference §2): BadRequestError, NotFoundError, "Bad Request" for body
validation errors, and so on.
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
    """pydantic errors, worded as vLLM words FastAPI's RequestValidationError."""
    errors = exc.errors(include_url=False, include_context=False)
    lines = []
    for err in errors[:10]:
        loc = ".".join(str(p) for p in (prefix, *err["loc"]))
        item = {"type": err["type"], "loc": loc, "msg": err["msg"], "input": _short(err.get("input"))}
        lines.append(f"  {item}")
    count = len(errors)
    message = f"{count} validation error{'s' if count != 1 else ''}:\n" + "\n".join(lines)
    param = ".".join(str(p) for p in (prefix, *errors[0]["loc"])) if errors else None
    return APIError(400, message, "Bad Request", param)


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 200 else text[:200] + "..."


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
