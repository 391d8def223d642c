"""Running one claimed job through the engine and shaping vLLM's response.

Input problems raise ValueError (the engine's PoolingInputError is one), which
the task turns into a failed job with a 400 in vLLM's error shape.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

from app.jobs.services import ClaimedJob
from app.pooling import responses


def _prompts(engine, req: dict[str, Any]) -> tuple[list, bool]:
    """The prompts to run and whether to add special tokens (chat renders its own)."""
    if "messages" not in req:
        return req["input"], req.get("add_special_tokens", True)
    from jinja2.exceptions import TemplateError

    try:
        prompt = engine.tokenizer.apply_chat_template(
            req["messages"], tokenize=False,
            add_generation_prompt=req.get("add_generation_prompt", False),
            continue_final_message=req.get("continue_final_message", False),
            **(req.get("chat_template_kwargs") or {}))
    except TemplateError as exc:
        raise ValueError(f"The chat template failed on these messages: {exc}") from None
    return [prompt], req.get("add_special_tokens", False)


def _common(req: dict[str, Any]) -> dict[str, Any]:
    return {"use_activation": req.get("use_activation"),
            "truncate_prompt_tokens": req.get("truncate_prompt_tokens"),
            "truncation_side": req.get("truncation_side")}


def run_classify(engine, job: ClaimedJob) -> dict[str, Any]:
    req = job.request
    prompts, special = _prompts(engine, req)
    outputs = engine.classify(prompts, add_special_tokens=special, **_common(req))
    return responses.classification(req["request_id"], job.model, outputs)


def run_pooling(engine, job: ClaimedJob) -> dict[str, Any]:
    req = job.request
    prompts, special = _prompts(engine, req)
    aggregation = req.get("aggregation_strategy")
    outputs = engine.encode(prompts, pooling_task=req["task"], add_special_tokens=special,
                            aggregation=aggregation if req["task"] == "token_classify" else None,
                            **_common(req))
    if req.get("encoding_format") == "base64":
        encoded = [encode_base64(out.data, req.get("embed_dtype", "float32"), req.get("endianness", "native"))
                   for out in outputs]
    else:
        encoded = [out.data for out in outputs]
    return responses.pooling(req["request_id"], job.model, outputs, encoded)


def _score_kwargs(req: dict[str, Any]) -> dict[str, Any]:
    return {"use_activation": req.get("use_activation"),
            "truncate_prompt_tokens": req.get("truncate_prompt_tokens"),
            "max_tokens_per_query": req.get("max_tokens_per_query", 0),
            "max_tokens_per_doc": req.get("max_tokens_per_doc", 0),
            "chat_template_kwargs": req.get("chat_template_kwargs")}


def run_score(engine, job: ClaimedJob) -> dict[str, Any]:
    req = job.request
    outputs = engine.score(req["data_1"], req["data_2"], **_score_kwargs(req))
    return responses.score(req["request_id"], job.model, outputs)


def run_rerank(engine, job: ClaimedJob) -> dict[str, Any]:
    req = job.request
    outputs = engine.score([req["query"]], req["documents"], **_score_kwargs(req))
    return responses.rerank(req["request_id"], job.model, req["documents"], outputs, req.get("top_n", 0))


RUNNERS = {"classify": run_classify, "pooling": run_pooling, "score": run_score, "rerank": run_rerank}


def run(engine, job: ClaimedJob) -> tuple[dict[str, Any], int]:
    """The response body and the prompt tokens it used."""
    body = RUNNERS[job.request.get("endpoint", "classify")](engine, job)
    return body, body["usage"]["prompt_tokens"]


def encode_base64(data, embed_dtype: str, endianness: str) -> str:
    """vLLM's base64 encoding: the flattened tensor's raw bytes in `embed_dtype`."""
    import torch

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[embed_dtype]
    tensor = torch.tensor(data, dtype=torch.float32).flatten().to(dtype)
    raw = tensor.view(torch.uint8).numpy().reshape(tensor.numel(), tensor.element_size())
    if endianness != "native" and endianness != sys.byteorder:
        raw = raw[:, ::-1]
    return base64.b64encode(raw.tobytes()).decode("ascii")
