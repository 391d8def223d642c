"""Running one claimed job through the engine and shaping vLLM's response."""

from __future__ import annotations

from typing import Any

from app.jobs.services import ClaimedJob
from app.pooling import responses


def run_classify(engine, job: ClaimedJob) -> tuple[dict[str, Any], int]:
    req = job.request
    outputs = engine.classify(
        req["input"],
        use_activation=req.get("use_activation"),
        truncate_prompt_tokens=req.get("truncate_prompt_tokens"),
        truncation_side=req.get("truncation_side"),
        add_special_tokens=req.get("add_special_tokens", True),
    )
    body = responses.classification(req["request_id"], job.model, outputs)
    return body, body["usage"]["prompt_tokens"]


RUNNERS = {
    "classify": run_classify,
}


def run(engine, job: ClaimedJob) -> tuple[dict[str, Any], int]:
    """The response body and the prompt tokens used; input errors propagate."""
    return RUNNERS[job.task](engine, job)
