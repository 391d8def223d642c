"""Response models of the files and batches routes, and their OpenAPI path items.

The routes build plain dicts (files.file_resource, services.batch_resource);
these models describe them for app/openapi.py, with extra keys forbidden so
the fuzz test catches a builder that drifts from the document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.pooling.schemas import ResponseModel

BatchEvent = Literal["completed", "failed", "expired", "cancelled"]
Endpoint = Literal["/classify", "/pooling", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank"]


class BatchCreateRequest(BaseModel):
    """OpenAI's batch creation body; `endpoint` is one of poolq's pooling routes."""

    input_file_id: str = Field(description="A file uploaded with purpose `batch`: JSONL of "
                               "{custom_id, method, url, body} lines, as `vllm run-batch` reads them.")
    endpoint: Endpoint
    completion_window: str = Field(default="24h", description="`24h` (OpenAI), or `<N>s|m|h|d` up to 7 days.")
    metadata: dict[str, str] | None = None
    webhook: str | None = Field(default=None, max_length=2048, description=(
        "Called (Standard Webhooks, signed) when the batch ends, with the batch object plus `type`: "
        "`batch.completed`, `batch.failed`, `batch.expired` or `batch.cancelled`."))
    webhook_events_filter: list[BatchEvent] | None = Field(
        default=None, min_length=1, description="Which final states to announce; all four by default.")


class FileObject(ResponseModel):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str = Field(description="`batch` for inputs, `batch_output` for a batch's output and error files.")
    status: Literal["processed"]
    status_details: str | None
    expires_at: int | None


class FileList(ResponseModel):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(ResponseModel):
    id: str
    object: Literal["file"]
    deleted: bool


class BatchErrorItem(ResponseModel):
    code: str
    message: str
    param: str | None
    line: int | None


class BatchErrors(ResponseModel):
    object: Literal["list"]
    data: list[BatchErrorItem]


class BatchRequestCounts(ResponseModel):
    total: int
    completed: int
    failed: int


class BatchObject(ResponseModel):
    id: str
    object: Literal["batch"]
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None
    webhook: str | None
    webhook_events_filter: list[BatchEvent] | None


class BatchList(ResponseModel):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


REQUEST_MODELS = (BatchCreateRequest,)
RESPONSE_MODELS = (FileObject, FileList, FileDeleted, BatchObject, BatchList)
OPENAPI_TAG = {"name": "batches", "description": "OpenAI-style files and batches (bulk, run-batch lines)."}


def openapi_paths(json_response: Callable[..., dict[str, Any]],
                  errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Path items, built with app/openapi.py's `_json` and `_errors` helpers."""
    def path_param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    def operation(op_id: str, summary: str, responses: dict[str, Any], *params: dict, **extra) -> dict[str, Any]:
        return {"tags": ["batches"], "operationId": op_id, "summary": summary, "parameters": list(params),
                "responses": responses, **extra}

    upload = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "purpose"],
        "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"enum": ["batch"]},
                       # OpenAI's expiry policy; without it, POOLQ_FILE_EXPIRY_S applies.
                       "expires_after[anchor]": {"enum": ["created_at"]},
                       "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000}}}}}}
    create = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/BatchCreateRequest"}}}}
    page = (query("limit", {"type": "integer"}), query("after", {"type": "string"}))
    content = {"description": "The file's bytes.",
               "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    return {
        "/v1/files": {"post": operation("uploadFile", "Upload a JSONL batch input (multipart, purpose=batch).",
                                        {"200": json_response("FileObject", "The file."), **errors("400", "413")},
                                        requestBody=upload),
                      "get": operation("listFiles", "The caller's files, newest first.",
                                       {"200": json_response("FileList", "A page of files."),
                                        **errors("400", "404")},
                                       query("purpose", {"enum": ["batch", "batch_output"]}), *page)},
        "/v1/files/{file_id}": {
            "get": operation("getFile", "A file's description.",
                             {"200": json_response("FileObject", "The file."), **errors("404")},
                             path_param("file_id")),
            "delete": operation("deleteFile", "Delete a file.",
                                {"200": json_response("FileDeleted", "Deleted."), **errors("404")},
                                path_param("file_id"))},
        "/v1/files/{file_id}/content": {"get": operation(
            "getFileContent", "A file's bytes (a batch's output or error file: run-batch output lines).",
            {"200": content, **errors("404")}, path_param("file_id"))},
        "/v1/batches": {"post": operation("createBatch", "Run every line of an input file, in bulk.",
                                          {"200": json_response("BatchObject", "The batch, validating."),
                                           **errors("400", "404")}, requestBody=create),
                        "get": operation("listBatches", "The caller's batches, newest first.",
                                         {"200": json_response("BatchList", "A page of batches."),
                                          **errors("400", "404")}, *page)},
        "/v1/batches/{batch_id}": {"get": operation(
            "getBatch", "A batch: status, request counts, output and error files.",
            {"200": json_response("BatchObject", "The batch."), **errors("404")}, path_param("batch_id"))},
        "/v1/batches/{batch_id}/cancel": {"post": operation(
            "cancelBatch", "Cancel: chunks not started never run; running ones finish and are kept.",
            {"200": json_response("BatchObject", "The batch, cancelling or cancelled."), **errors("404", "409")},
            path_param("batch_id"))},
        "/v1/batches/{batch_id}/webhook-deliveries": {"get": operation(
            "listBatchWebhookDeliveries", "A batch's webhook deliveries (its final event), each with every attempt.",
            {"200": json_response("WebhookDeliveryList", "The deliveries."), **errors("404")},
            path_param("batch_id"))},
    }
