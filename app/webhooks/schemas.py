"""Response models of the webhook routes, and their OpenAPI path items.

The routes build plain dicts (app/webhooks/services.py, tenant_secrets.py);
these models describe them for the document in app/openapi.py, with extra keys
forbidden so the fuzz test catches a builder that drifts from the document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from app.pooling.schemas import ResponseModel


class WebhookSecret(ResponseModel):
    """The caller's Standard Webhooks signing secret."""

    object: Literal["webhook_secret"]
    secret: str = Field(description="`whsec_` + base64 of 32 bytes: the HMAC-SHA256 key, base64-decoded.")
    rotated_at: float | None = Field(default=None, description="Unix time of the last rotation.")
    previous_secret: str | None = Field(
        default=None, description="Present while deliveries are still signed with it too (the grace period).")
    previous_expires_at: float | None = Field(default=None, description="Unix time the grace period ends.")


class WebhookAttemptInfo(ResponseModel):
    number: int
    attempted_at: float = Field(description="Unix time, seconds.")
    status_code: int | None = Field(description="null when no answer came (connection error, timeout, refused).")
    latency_ms: int | None
    error: str | None
    response_body: str | None = Field(description="The first KiB of the endpoint's answer.")


class WebhookDeliveryResource(ResponseModel):
    """One event for one endpoint; `webhook_id` is the `webhook-id` header of every attempt."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    object: Literal["webhook_delivery"]
    webhook_id: str
    job_id: str | None = Field(json_schema_extra={"format": "uuid"}, description="Set for a job's events.")
    batch_id: str | None = Field(description="Set for a batch's events.")
    event: Literal["job.started", "job.completed", "batch.completed", "batch.failed", "batch.expired",
                   "batch.cancelled"]
    url: str
    status: Literal["pending", "succeeded", "failed", "disabled"] = Field(
        description="`disabled`: the endpoint answered 410 Gone; nothing more is sent to it.")
    created_at: float
    next_attempt_at: float | None
    finished_at: float | None
    attempts: list[WebhookAttemptInfo]


class WebhookDeliveryList(ResponseModel):
    object: Literal["list"]
    data: list[WebhookDeliveryResource]


RESPONSE_MODELS = (WebhookSecret, WebhookDeliveryResource, WebhookDeliveryList)
OPENAPI_TAG = {"name": "webhooks", "description": "Signing secrets and the deliveries of job and batch events."}


def openapi_paths(json_response: Callable[..., dict[str, Any]],
                  errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Path items, built with app/openapi.py's `_json` and `_errors` helpers."""
    def uuid_param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}

    def operation(op_id: str, summary: str, responses: dict[str, Any], *params: dict) -> dict[str, Any]:
        return {"tags": ["webhooks"], "operationId": op_id, "summary": summary, "parameters": list(params),
                "responses": responses}

    return {
        "/v1/webhooks/secret": {"get": operation(
            "getWebhookSecret", "The caller's webhook signing secret.",
            {"200": json_response("WebhookSecret", "The secret."), **errors()})},
        "/v1/webhooks/secret/rotate": {"post": operation(
            "rotateWebhookSecret", "A new signing secret; the old one also signs until the grace period ends.",
            {"200": json_response("WebhookSecret", "The new secret."), **errors()})},
        "/v1/jobs/{job_id}/webhook-deliveries": {"get": operation(
            "listWebhookDeliveries", "A job's webhook deliveries, each with every attempt.",
            {"200": json_response("WebhookDeliveryList", "The deliveries."), **errors("404")},
            uuid_param("job_id"))},
        "/v1/webhook-deliveries/{delivery_id}/redeliver": {"post": operation(
            "redeliverWebhook", "Send a delivery again: a new cycle of attempts under the same webhook-id.",
            {"202": json_response("WebhookDeliveryResource", "Queued for delivery."), **errors("404", "409")},
            uuid_param("delivery_id"))},
    }
