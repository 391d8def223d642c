"""The schedules API's request body (validated with it) and response models, and their OpenAPI path items.

The routes build plain dicts (services.schedule_resource); the response
models describe them for app/openapi.py with extra keys forbidden, so the
fuzz test catches a builder that drifts from the document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.batches.schemas import Endpoint
from app.pooling.schemas import ResponseModel

Task = Literal["classify", "token_classify", "score", "rerank"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
DURATION = r"^[1-9][0-9]{0,5}[smhd]$"


def _reject_nul(value: Any) -> None:
    # Postgres text and JSONB refuse "\u0000": a 400 here, not a 500 at the INSERT.
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("strings must not contain NUL (\\u0000)")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key)
            _reject_nul(item)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _no_nul(self):
        for name in type(self).model_fields:
            _reject_nul(getattr(self, name))
        return self


class JobSelection(_Body):
    """Past jobs of the caller's tenant, chosen afresh at each firing. Each job becomes one input line:
    its stored request, sent to the schedule's endpoint with the schedule's model; `custom_id` is the job id."""

    model: str | None = Field(default=None, min_length=1, max_length=64,
                              description="Jobs that ran on this model (it need not be served any more).")
    task: Task | None = Field(default=None, description="Defaults to the tasks the schedule's endpoint runs.")
    status: JobStatus | None = Field(default=None, description="Any status when absent.")
    since: str | None = Field(default=None, pattern=DURATION, description=(
        "Jobs created in this window before the firing (`<N>s|m|h|d`, e.g. `24h`); all retained jobs when absent."))
    metadata: dict[str, str] | None = Field(default=None, max_length=16,
                                            description="Jobs whose metadata has every one of these pairs.")


class ScheduleCreateRequest(_Body):
    """A cron schedule that creates a batch at each firing, from an input file or from a job selection."""

    name: str = Field(min_length=1, max_length=128)
    cron: str = Field(min_length=1, max_length=255, description=(
        "Five fields (minute hour day-of-month month day-of-week) or @daily, @hourly, …, on the time zone's wall "
        "clock."))
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="An IANA name: `Europe/Paris`.")
    endpoint: Endpoint
    model: str = Field(min_length=1, max_length=64, description="A served model; every line runs on it.")
    revision: str | None = Field(default=None, min_length=1, max_length=255, description=(
        "When set, must equal the served model's revision, now and at each firing (a firing on other weights "
        "is skipped, with `last_error`)."))
    input_file_id: str | None = Field(default=None, max_length=64, description=(
        "A file with purpose `batch`; each line's `body.model` is set to `model` at firing."))
    selection: JobSelection | None = None
    completion_window: str = Field(default="24h", max_length=16, description="Each batch's window.")
    metadata: dict[str, str] | None = Field(default=None, max_length=15, description=(
        "Each batch's metadata, plus `schedule_id`."))
    paused: bool = False


class SelectionObject(ResponseModel):
    model: str | None
    task: Task | None
    status: JobStatus | None
    since: str | None
    metadata: dict[str, str] | None


class ScheduleObject(ResponseModel):
    id: str
    object: Literal["schedule"]
    name: str
    cron: str
    timezone: str
    endpoint: str
    model: str
    revision: str | None
    input_file_id: str | None
    selection: SelectionObject | None
    completion_window: str
    metadata: dict[str, str] | None
    paused: bool
    next_run_at: int | None = Field(description="Unix time of the next firing; null while paused.")
    last_run_at: int | None
    last_batch_id: str | None
    last_error: str | None = Field(description="Why the last firing made no batch; null when it made one.")
    created_at: int


class ScheduleList(ResponseModel):
    object: Literal["list"]
    data: list[ScheduleObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ScheduleDeleted(ResponseModel):
    id: str
    object: Literal["schedule"]
    deleted: bool


REQUEST_MODELS = (ScheduleCreateRequest,)
RESPONSE_MODELS = (ScheduleObject, ScheduleList, ScheduleDeleted)
OPENAPI_TAG = {"name": "schedules", "description": "Cron schedules that fire batches (nightly reprocessing)."}


def openapi_paths(json_response: Callable[..., dict[str, Any]],
                  errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Path items, built with app/openapi.py's `_json` and `_errors` helpers."""
    schedule_id = {"name": "schedule_id", "in": "path", "required": True, "schema": {"type": "string"}}

    def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    def operation(op_id: str, summary: str, responses: dict[str, Any], *params: dict, **extra) -> dict[str, Any]:
        return {"tags": ["schedules"], "operationId": op_id, "summary": summary, "parameters": list(params),
                "responses": responses, **extra}

    one = {"200": json_response("ScheduleObject", "The schedule."), **errors("404")}
    create = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ScheduleCreateRequest"}}}}
    return {
        "/v1/schedules": {
            "post": operation("createSchedule", "Create a schedule; its first firing is the next cron slot.",
                              {"200": json_response("ScheduleObject", "The schedule."), **errors("400")},
                              requestBody=create),
            "get": operation("listSchedules", "The caller's schedules, newest first.",
                             {"200": json_response("ScheduleList", "A page of schedules."), **errors("400", "404")},
                             query("limit", {"type": "integer"}), query("after", {"type": "string"}))},
        "/v1/schedules/{schedule_id}": {
            "get": operation("getSchedule", "A schedule: its next and last firing.", one, schedule_id),
            "delete": operation("deleteSchedule", "Delete a schedule (the batches it made stay).",
                                {"200": json_response("ScheduleDeleted", "Deleted."), **errors("404")},
                                schedule_id)},
        "/v1/schedules/{schedule_id}/pause": {"post": operation(
            "pauseSchedule", "Stop firing until resumed.", one, schedule_id)},
        "/v1/schedules/{schedule_id}/resume": {"post": operation(
            "resumeSchedule", "Fire again from the next cron slot after now (missed slots are not caught up).",
            one, schedule_id)},
        "/v1/schedules/{schedule_id}/trigger": {"post": operation(
            "triggerSchedule", "Fire now, paused or not, leaving the next slot as it is.",
            {"200": json_response("BatchObject", "The new batch, validating."),
             **errors("404", "409", "413")}, schedule_id)},
    }
