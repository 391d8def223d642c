"""Validating a pooling request fully, before anything is written.

Turns a raw JSON body for one of vLLM's pooling endpoints (or a native job of
the matching task) into the request a worker runs, with vLLM's status codes
and messages for everything that can be known without tokenizing. What needs
the tokenizer (an over-length prompt) fails the job in the worker instead,
with the same message.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from app.errors import APIError, bad_request, validation_error
from app.pooling import protocol as p
from app.served import ServedModel, ServedModels

# A native job's task -> the endpoint whose body and response it uses.
TASK_ENDPOINTS = {"classify": "classify", "token_classify": "pooling", "score": "score", "rerank": "rerank"}



def not_mounted() -> APIError:
    """vLLM mounts no such route for this model: FastAPI's 404, in both shapes."""
    return APIError(404, "Not Found", "NotFoundError", extra={"detail": "Not Found"})


def parse(endpoint: str, body: Any, served: ServedModels, max_items: int,
          header_request_id: str | None = None, task: str | None = None) -> tuple[ServedModel, dict[str, Any]]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    _reject_removed_parameters(endpoint, body)
    parser = {"classify": _classify, "pooling": _pooling, "score": _score, "rerank": _rerank}[endpoint]
    model, request = parser(body, served, max_items, task)
    request["endpoint"] = endpoint
    request["model"] = model.name
    request["request_id"] = header_request_id or request.get("request_id") or p.random_request_id()
    return model, request


def _validate(cls: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _dump(request: BaseModel) -> dict[str, Any]:
    """The declared fields only: extra fields are accepted and ignored, as in vLLM."""
    return {k: v for k, v in request.model_dump().items() if k in type(request).model_fields}


def _reject_removed_parameters(endpoint: str, body: dict[str, Any]) -> None:
    if endpoint not in ("classify", "pooling"):
        return
    if "normalize" in body:
        raise bad_request("Parameter `normalize` was removed; use `use_activation` instead.", "normalize")
    if body.get("task") == "score":
        raise bad_request("`score` task was removed; use `classify` instead.", "task")
    if body.get("task") == "encode":
        raise bad_request("`encode` task was removed; use `token_embed` or `token_classify` instead.", "task")


def _prompts(request, model: ServedModel, max_items: int) -> dict[str, Any]:
    """Shared checks of the completion and chat forms."""
    _check_truncation(request.truncate_prompt_tokens, model)
    if isinstance(request, p.ChatMixin):
        if request.add_generation_prompt and request.continue_final_message:
            raise bad_request("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        if request.chat_template is not None:
            raise bad_request("Chat template is passed with request, but --trust-request-chat-template is not "
                              "set. Refused request with untrusted chat template.")
        if not request.messages:
            raise bad_request("You must pass at least one message", "messages")
        # As sent (extra keys kept for the chat template), without defaults pydantic filled in.
        return {"messages": [m.model_dump(exclude_unset=True) for m in request.messages]}
    count = p.prompt_count(request.input)
    if count == 0:
        raise bad_request("You must pass at least one prompt", "input")
    _check_items(count, max_items, "input")
    return {"input": p.as_prompt_list(request.input)}


def _classify(body, served, max_items, task) -> tuple[ServedModel, dict[str, Any]]:
    request = _validate(p.ClassifyChatRequest if "messages" in body else p.ClassifyRequest, body)
    model = served.resolve(request.model)
    if model.card.task != "classify":
        if "classify" in model.card.supported_tasks:
            raise APIError(501, "The model does not support Classification API", "NotImplementedError")
        raise not_mounted()
    stored = {**_dump(request), **_prompts(request, model, max_items), "task": "classify"}
    return model, stored


def _pooling(body, served, max_items, task) -> tuple[ServedModel, dict[str, Any]]:
    if task is not None and body.get("task") is None:
        body = {**body, "task": task}  # a native token_classify job names its task once
    request = _validate(p.PoolingChatRequest if "messages" in body else p.PoolingRequest, body)
    model = served.resolve(request.model)
    chosen = request.task or model.card.task
    if chosen != model.card.task:
        if chosen not in model.card.supported_tasks:
            raise bad_request(f"Unsupported task: {chosen!r} Supported tasks: {model.card.supported_tasks}", "task")
        raise bad_request(f"Try switching the model's pooling_task via --pooler-config.task {chosen}.", "task")
    if request.dimensions is not None:
        raise bad_request("dimensions is currently not supported", "dimensions")
    if request.encoding_format in ("bytes", "bytes_only"):
        raise bad_request(f"encoding_format {request.encoding_format!r} is not supported by poolq; "
                          "use 'float' or 'base64'", "encoding_format")
    if request.aggregation_strategy not in (None, "none") and chosen != "token_classify":
        raise bad_request("aggregation_strategy applies to the token_classify task only", "aggregation_strategy")
    stored = {**_dump(request), **_prompts(request, model, max_items), "task": chosen}
    return model, stored


def _score_model(request, served) -> ServedModel:
    model = served.resolve(request.model)
    if not model.card.supports_score:
        raise not_mounted()  # vLLM mounts no score routes for such a model
    _check_truncation(request.truncate_prompt_tokens, model)
    for name in ("max_tokens_per_query", "max_tokens_per_doc"):
        value = getattr(request, name)
        if value < 0:
            raise bad_request(f"{name} must be a non-negative integer", name)
        if value >= model.card.max_model_len:
            raise bad_request(f"{name} must be less than max_model_len ({model.card.max_model_len})", name)
    return model


def _text_side(side, model: ServedModel, what: str) -> list[str]:
    items = side if isinstance(side, list) else [side]
    if not items:
        raise bad_request(f"At least one {what} element must be given")
    if any(not isinstance(item, str) for item in items):
        raise bad_request(f"MultiModalParam is not supported for {model.card.architecture}")
    return items


def _scoring_kwargs(request: p.ScoringBase) -> dict[str, Any]:
    kwargs = dict(request.chat_template_kwargs or {})
    if request.instruction is not None:
        kwargs.setdefault("instruction", request.instruction)  # an explicit kwarg wins, as in vLLM
    return {
        "use_activation": request.use_activation,
        "truncate_prompt_tokens": request.truncate_prompt_tokens,
        "max_tokens_per_query": request.max_tokens_per_query,
        "max_tokens_per_doc": request.max_tokens_per_doc,
        "chat_template_kwargs": kwargs or None,
        "request_id": request.request_id,
    }


def _score(body, served, max_items, task) -> tuple[ServedModel, dict[str, Any]]:
    for cls, first, second in p.SCORE_SHAPES:
        if first in body and second in body:
            break
    else:
        raise APIError(400, "1 validation error:\n  {'type': 'missing', 'loc': 'body', 'msg': "
                       "'Field required: give queries/documents, queries/items, data_1/data_2 or text_1/text_2'}",
                       "Bad Request", "body")
    request = _validate(cls, body)
    model = _score_model(request, served)
    data_1 = _text_side(getattr(request, first), model, "text")
    data_2 = _text_side(getattr(request, second), model, "text_pair")
    if not (len(data_1) == 1 or len(data_1) == len(data_2)):
        raise bad_request("Input lengths must be either 1:1, 1:N or N:N")
    _check_items(len(data_2), max_items, second)
    return model, {"task": "score", "data_1": data_1, "data_2": data_2, **_scoring_kwargs(request)}


def _rerank(body, served, max_items, task) -> tuple[ServedModel, dict[str, Any]]:
    request = _validate(p.RerankRequest, body)
    model = _score_model(request, served)
    query = _text_side(request.query, model, "text")
    documents = _text_side(request.documents, model, "text_pair")
    _check_items(len(documents), max_items, "documents")
    return model, {"task": "rerank", "query": query[0], "documents": documents, "top_n": request.top_n,
                   **_scoring_kwargs(request)}


def _check_truncation(limit: int | None, model: ServedModel) -> None:
    if limit is not None and limit > model.card.max_model_len:
        raise bad_request("truncate_prompt_tokens value is greater than max_model_len. "
                          "Please request a smaller truncation size.", "truncate_prompt_tokens")


def _check_items(count: int, max_items: int, param: str) -> None:
    if count > max_items:
        raise APIError(413, f"Too many inputs: {count} (at most {max_items} per request).",
                       "RequestEntityTooLarge", param)
