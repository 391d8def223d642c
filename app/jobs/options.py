"""poolq's job-level fields, accepted beside any pooling request body."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from app.errors import validation_error

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, strict=True)]
MetadataValue = Annotated[str, StringConstraints(max_length=512, strict=True)]


class JobOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # OpenAI's metadata limits: 16 pairs, 64-character keys, 512-character values.
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    webhook: Annotated[str, StringConstraints(min_length=1, max_length=2048, strict=True)] | None = None
    webhook_events_filter: list[Literal["started", "completed"]] | None = None

    @field_validator("metadata")
    @classmethod
    def _no_nul(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # Metadata is stored as JSONB to be filterable, and JSONB refuses NUL.
        if value and any("\x00" in k or "\x00" in v for k, v in value.items()):
            raise ValueError("metadata keys and values cannot contain NUL characters")
        return value


JOB_OPTION_FIELDS = tuple(JobOptions.model_fields)


def parse_job_options(body: dict[str, Any]) -> JobOptions:
    try:
        return JobOptions.model_validate({k: body[k] for k in JOB_OPTION_FIELDS if k in body})
    except ValidationError as exc:
        raise validation_error(exc) from None


def request_hash(body: Any) -> str:
    """Canonical JSON of the body: the same request hashes the same, key order aside."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def with_webhook(options: JobOptions, settings) -> JobOptions:
    """Check the callback (URL safety, disabled endpoints, events) before anything is written."""
    from app.webhooks.services import validate_subscription

    webhook, events = validate_subscription(options.webhook, options.webhook_events_filter, settings)
    return options.model_copy(update={"webhook": webhook, "webhook_events_filter": events})
