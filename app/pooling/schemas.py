"""Response models of vLLM 0.33's pooling protocol, and poolq's own resources.

The routes build their bodies as plain dicts (app/pooling/responses.py,
app/jobs/services.py); these models describe those dicts for the OpenAPI
document. Field names, order and nullability follow vLLM's models
(reference §1.3-1.7, §2). Two deliberate differences from vLLM's classes:

* Fields have no defaults, because every builder always writes every key, so
  the schema marks them all required; an optional key (`entities`) has one.
* Extra keys are forbidden, so the fuzz test's schema check catches a
  builder that drifts from the document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- usage -----------------------------------------------------------------

class PromptTokenUsageInfo(ResponseModel):
    cached_tokens: int | None


class UsageInfo(ResponseModel):
    """Pooling usage: prompt_tokens == total_tokens, completion_tokens 0, details null."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None
    prompt_tokens_details: PromptTokenUsageInfo | None
    completion_tokens_details: dict[str, Any] | None


# --- /classify ---------------------------------------------------------------

class ClassificationData(ResponseModel):
    index: int
    label: str | None = Field(description="The `id2label` name of the argmax class.")
    probs: list[float] = Field(description="Activated outputs, or raw logits with `use_activation: false`.")
    num_classes: int


class ClassificationResponse(ResponseModel):
    id: str = Field(pattern=r"^classify-", description="`classify-` + X-Request-Id, `request_id` or a random id.")
    object: Literal["list"]
    created: int
    model: str
    data: list[ClassificationData]
    usage: UsageInfo


# --- /pooling ----------------------------------------------------------------

class TokenEntity(ResponseModel):
    """One token, as transformers' pipeline reports it with `aggregation_strategy: none`."""

    entity: str
    score: float
    index: int
    word: str
    start: int | None
    end: int | None


class EntityGroup(ResponseModel):
    """Adjacent tokens or words merged under one tag (the other strategies)."""

    entity_group: str
    score: float
    word: str
    start: int | None
    end: int | None


class PoolingResponseData(ResponseModel):
    index: int
    object: Literal["pooling"]
    data: list[list[float]] | list[float] | str = Field(
        description="`classify`: [num_labels]; `token_classify`: [n_tokens][num_labels]; "
                    "a base64 string of float32 values with `encoding_format: base64`.")
    # poolq's extension, present only when `aggregation_strategy` was given.
    entities: list[TokenEntity | EntityGroup] | None = None


class PoolingResponse(ResponseModel):
    id: str = Field(pattern=r"^pooling-")
    object: Literal["list"]
    created: int
    model: str
    data: list[PoolingResponseData]
    usage: UsageInfo


# --- /score ------------------------------------------------------------------

class ScoreResponseData(ResponseModel):
    index: int
    object: Literal["score"]
    score: float


class ScoreResponse(ResponseModel):
    """Scores in pair order, unsorted."""

    id: str = Field(pattern=r"^score-")
    object: Literal["list"]
    created: int
    model: str
    data: list[ScoreResponseData]
    usage: UsageInfo


# --- /rerank -----------------------------------------------------------------

class RerankDocument(ResponseModel):
    text: str | None
    multi_modal: list[dict[str, Any]] | None


class RerankResult(ResponseModel):
    index: int = Field(description="The document's position in the request.")
    document: RerankDocument
    relevance_score: float


class RerankUsage(ResponseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(ResponseModel):
    """Best first, cut to `top_n`. vLLM 0.33 has no `object`/`created` here, and the `score-` prefix."""

    id: str = Field(pattern=r"^score-")
    model: str
    usage: RerankUsage
    results: list[RerankResult]


# --- /tokenize, /detokenize ----------------------------------------------------

class TokenizeResponse(ResponseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = Field(description="With `return_token_strs: true`: each id's token.")


class DetokenizeResponse(ResponseModel):
    prompt: str


# --- errors ------------------------------------------------------------------

class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None
    code: int = Field(description="Equals the HTTP status.")


class ErrorResponse(ResponseModel):
    error: ErrorInfo
    # FastAPI's `{"detail": ...}`, which vLLM answers for routes it does not
    # mount; poolq sends it beside `error` so either kind of client reads it.
    detail: str | None = None


# --- poolq's jobs and system routes ---------------------------------------------

class JobUsage(ResponseModel):
    prompt_tokens: int
    total_tokens: int


class JobResource(ResponseModel):
    """A job, as `POST /v1/jobs`, a 202 and `GET /v1/jobs/{id}` show it."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    object: Literal["job"]
    task: Literal["classify", "token_classify", "score", "rerank"]
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    num_inputs: int
    attempts: int
    created_at: float = Field(description="Unix time, seconds.")
    started_at: float | None
    finished_at: float | None
    usage: JobUsage | None
    metadata: dict[str, str]
    webhook: str | None
    webhook_events_filter: list[Literal["started", "completed"]] | None
    result: ClassificationResponse | PoolingResponse | ScoreResponse | RerankResponse | None = Field(
        description="Once succeeded: exactly the body the synchronous route answers.")
    error: ErrorInfo | None


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    revision: str | None
    max_model_len: int
    architecture: str
    task: str = Field(description="The active pooling task.")
    tasks: list[str]
    labels: list[str]


class ModelList(ResponseModel):
    object: Literal["list"]
    data: list[ModelCard]


class JobList(ResponseModel):
    object: Literal["list"]
    data: list[JobResource]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `after` for the next page.")


class JobDeleted(ResponseModel):
    id: str
    object: Literal["job.deleted"]
    deleted: bool


class Health(ResponseModel):
    status: Literal["ok"]


class Readiness(ResponseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="`ok` or `error: <type>` per dependency.")


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ClassificationResponse, PoolingResponse, ScoreResponse, RerankResponse, TokenizeResponse, DetokenizeResponse,
    ErrorResponse,
    JobResource, JobList, JobDeleted, ModelList, Health, Readiness,
)
