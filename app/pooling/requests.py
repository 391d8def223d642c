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
from app.pooling.binary import BINARY_FORMATS
from app.served import ServedModel, ServedModels
from models.catalog import POOLING_TASKS

# A native job's task -> the endpoint whose body and response it uses.
TASK_ENDPOINTS = {"classify": "classify", "token_classify": "pooling", "score": "score", "rerank": "rerank"}

# vLLM 0.33's answer to `task: "plugin"` (or a plugin body, `data`) when no
# IO-processor plugin is installed (pooling/serving.py, ServingPooling); poolq loads none.
NO_PLUGIN = ("No IOProcessor plugin installed. Please refer to the documentation and to the "
             "'prithvi_geospatial_mae_io_processor' offline inference example for more details.")

# vLLM's validate_cache_salt (entrypoints/generate/base/protocol.py): the salt
# keys prefix-cache blocks downstream, so it is refused rather than trimmed.
CACHE_SALT_MAX = 128
CACHE_SALT_FORBIDDEN = frozenset("@/\\\x00")


def parse(endpoint: str, body: Any, served: ServedModels, max_items: int,
          header_request_id: str | None = None, task: str | None = None) -> tuple[ServedModel, dict[str, Any]]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    _reject_removed_parameters(endpoint, body)
    _check_cache_salt(body.get("cache_salt"))
    _reject_mm_kwargs(body)
    parser = {"classify": _classify, "pooling": _pooling, "score": _score, "rerank": _rerank}[endpoint]
    model, request = parser(body, served, max_items, task)
    request["endpoint"] = endpoint
    request["model"] = model.name
    request["request_id"] = _response_id_base(header_request_id, request.get("request_id"), native=task is not None)
    return model, request


def _response_id_base(header: str | None, body_id: str | None, native: bool) -> str:
    """What follows the route's prefix in the response id.

    vLLM's pooling serving (pooling/base/serving.py, `_init_ctx`, and
    `_base_request_id` in serve/engine/serving.py) takes the X-Request-Id
    header when one is sent, even empty, else a random id: the body's
    `request_id` does not name the response. A native job, poolq's own API,
    also takes the body's `request_id` when no header is sent.
    """
    if header is not None:
        return header
    if native and body_id:
        return body_id
    return p.random_request_id()


def _validate(cls: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _dump(request: BaseModel) -> dict[str, Any]:
    """The declared fields only: extra fields are accepted and ignored, as in vLLM."""
    cls = type(request)
    fields = _DECLARED.get(cls)
    if fields is None:  # model_fields is a property that builds its answer each time
        fields = _DECLARED[cls] = frozenset(cls.model_fields)
    return request.model_dump(include=fields)  # filtered by pydantic: 2.2 us a batch line, 3.4 as a dict comprehension


_DECLARED: dict[type, frozenset[str]] = {}


def _reject_removed_parameters(endpoint: str, body: dict[str, Any]) -> None:
    if endpoint not in ("classify", "pooling"):
        return
    if "normalize" in body:
        raise bad_request("Parameter `normalize` was removed; use `use_activation` instead.", "normalize")
    if body.get("task") == "score":
        raise bad_request("`score` task was removed; use `classify` instead.", "task")
    if body.get("task") == "encode":
        raise bad_request("`encode` task was removed; use `token_embed` or `token_classify` instead.", "task")


def _check_cache_salt(salt: Any) -> None:
    if salt is None:
        return
    if not isinstance(salt, str) or not salt:
        raise bad_request("Parameter 'cache_salt' must be a non-empty string if provided.", "cache_salt")
    if len(salt) > CACHE_SALT_MAX or any(char in CACHE_SALT_FORBIDDEN for char in salt):
        raise bad_request("Parameter 'cache_salt' must be at most 128 characters and must not contain "
                          "'@', '/', '\\\\', or NUL.", "cache_salt")


def _reject_mm_kwargs(body: dict[str, Any]) -> None:
    """vLLM's validate_request_mm_kwargs (generate/base/protocol.py) without --trust-request-mm-kwargs,
    which poolq does not have: it serves text models."""
    for name, what in (("mm_processor_kwargs", "multimodal preprocessing"),
                       ("media_io_kwargs", "multimodal media loading")):
        if body.get(name):
            raise bad_request(f"Per-request {name} are disabled by default because they can change {what} "
                              "resource usage; poolq serves text models and takes none.", name)


def _served_for(model: ServedModel, wanted: str, native_task: str | None) -> None:
    """The route (or the native job's task) must be the model's task; else a 400 saying how to serve it."""
    if wanted not in model.card.tasks:
        raise model.task_not_served(wanted, "task" if native_task else "model", route=native_task is None)


def check_chat_options(request) -> None:
    """vLLM's refusals for a chat body (also /tokenize's): both prompt flags, or a template sent with it."""
    if request.add_generation_prompt and request.continue_final_message:
        raise bad_request("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    if request.chat_template is not None:
        raise bad_request("Chat template is passed with request, but --trust-request-chat-template is not "
                          "set. Refused request with untrusted chat template.")


def _prompts(request, model: ServedModel, max_items: int) -> dict[str, Any]:
    """Shared checks of the completion and chat forms."""
    _check_truncation(request.truncate_prompt_tokens, model)
    if isinstance(request, p.ChatMixin):
        check_chat_options(request)
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
    _served_for(model, "classify", task)
    stored = {**_dump(request), **_prompts(request, model, max_items), "task": "classify"}
    return model, stored


def _pooling(body, served, max_items, task) -> tuple[ServedModel, dict[str, Any]]:
    if task is not None and body.get("task") is None:
        body = {**body, "task": task}  # a native token_classify job names its task once
    if "data" in body and "input" not in body and "messages" not in body:
        # vLLM's third body form, IOProcessorRequest: only an installed plugin reads it.
        served.resolve(_validate(p.PluginRequest, body).model)
        raise bad_request(NO_PLUGIN, "task")
    request = _validate(p.PoolingChatRequest if "messages" in body else p.PoolingRequest, body)
    model = served.resolve(request.model)
    chosen = request.task or model.card.task
    if chosen == "plugin":
        raise bad_request(NO_PLUGIN, "task")
    if chosen != model.card.task:
        # vLLM's two openings (pooling/serving.py, ServingPooling), which its
        # clients and tests match on, then what poolq's --model option changes.
        if chosen not in model.card.supported_tasks:
            unsupported = f"Unsupported task: {chosen!r} Supported tasks: {model.card.supported_tasks}. "
            if chosen not in POOLING_TASKS:
                raise bad_request(unsupported + "poolq serves classification models (classify, token_classify, "
                                  "score, rerank); embedding tasks need an embedding server.", "task")
            raise bad_request(unsupported + model.why_not_served(chosen), "task")
        raise bad_request("Try switching the model's pooling_task via poolq's --model option. "
                          + model.why_not_served(chosen), "task")
    if request.dimensions is not None:
        raise bad_request("dimensions is currently not supported", "dimensions")
    if request.aggregation_strategy not in (None, "none") and chosen != "token_classify":
        raise bad_request("aggregation_strategy applies to the token_classify task only", "aggregation_strategy")
    stored = {**_dump(request), **_prompts(request, model, max_items), "task": chosen}
    if request.encoding_format in BINARY_FORMATS:
        # The worker stores JSON (base64 in the asked dtype and byte order);
        # the synchronous route turns it into vLLM's binary body (app/pooling/binary.py).
        stored.update(encoding_format="base64", binary_response=request.encoding_format)
    return model, stored


def _score_model(request, served, wanted: str, native_task: str | None) -> ServedModel:
    model = served.resolve(request.model)
    _served_for(model, wanted, native_task)  # vLLM mounts no score routes for such a model (a bare 404)
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
        raise bad_request("Invalid request: the body needs one of the pairs queries/documents, queries/items, "
                          "data_1/data_2 or text_1/text_2 [missing]", "body")
    request = _validate(cls, body)
    model = _score_model(request, served, "score", task)
    data_1 = _text_side(getattr(request, first), model, "text")
    data_2 = _text_side(getattr(request, second), model, "text_pair")
    if not (len(data_1) == 1 or len(data_1) == len(data_2)):
        raise bad_request("Input lengths must be either 1:1, 1:N or N:N")
    _check_items(len(data_2), max_items, second)
    return model, {"task": "score", "data_1": data_1, "data_2": data_2, **_scoring_kwargs(request)}


def _rerank(body, served, max_items, task) -> tuple[ServedModel, dict[str, Any]]:
    request = _validate(p.RerankRequest, body)
    model = _score_model(request, served, "rerank", task)
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
