"""SageMaker's `POST /invocations`: one route whose body picks the handler, as vLLM does.

vLLM (entrypoints/sagemaker/api_router.py, `invocations`, with the pooling
entries of entrypoints/pooling/__init__.py, `get_pooling_invocation_types`)
tries, in order, the request types the served model has a handler for:
classify (the model's task is classify), rerank then score (the model
scores), then pooling. The first type the body validates as is dispatched;
none is a 400 naming the types it expected. poolq serves several models, so
the body's `model` (or the default one) decides which handlers exist.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from app.errors import bad_request
from app.pooling import protocol as p
from app.served import ServedModel, ServedModels

# endpoint -> (vLLM's request type name, the body forms that validate as it)
REQUEST_TYPES: dict[str, tuple[str, tuple[type[BaseModel], ...]]] = {
    "classify": ("ClassificationRequest", (p.ClassifyRequest, p.ClassifyChatRequest)),
    "rerank": ("RerankRequest", (p.RerankRequest,)),
    "score": ("ScoreRequest", tuple(cls for cls, _, _ in p.SCORE_SHAPES)),
    "pooling": ("PoolingRequest", (p.PoolingRequest, p.PoolingChatRequest, p.PluginRequest)),
}


def invocation_endpoint(body: Any, served: ServedModels) -> str:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    name = body.get("model")
    candidates = _endpoints(served.resolve(name if isinstance(name, str) else None))
    for endpoint in candidates:
        if any(_validates(form, body) for form in REQUEST_TYPES[endpoint][1]):
            return endpoint
    expected = [REQUEST_TYPES[endpoint][0] for endpoint in candidates]
    raise bad_request(f"Cannot find suitable handler for request. Expected one of: {expected}")


def _endpoints(model: ServedModel) -> list[str]:
    endpoints = ["classify"] if model.card.task == "classify" else []
    if model.card.supports_score:
        endpoints += ["rerank", "score"]
    return endpoints + ["pooling"]


def _validates(form: type[BaseModel], body: dict[str, Any]) -> bool:
    try:
        form.model_validate(body)
    except ValidationError:
        return False
    return True
