"""Running one claimed job through the engine and shaping vLLM's response.

Input problems raise ValueError (the engine's PoolingInputError is one), which
the task turns into a failed job with a 400 in vLLM's error shape.

Large jobs run in chunks; before each chunk starts the job is checked for
cancellation, so a cancelled job stops within a few chunks of work. Chunks
overlap (the next ones are tokenized while the device runs the current one),
so chunking costs no throughput.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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


CHUNK = 2048
# Chunks of one job in the engine at once. One at a time would leave the
# device idle at every chunk boundary while the next chunk is tokenized.
IN_FLIGHT = 3


class JobCancelled(Exception):
    """The job was cancelled while it ran; nothing is to be written."""


def _chunked(run: Callable[[Sequence], list], items: Sequence, cancelled: Callable[[], bool]) -> list:
    starts = range(0, len(items), CHUNK)
    if len(starts) == 1:
        return run(items)
    outputs: list = []
    with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="poolq-chunk") as pool:
        pending = []
        try:
            for start in starts:
                if len(pending) == IN_FLIGHT:
                    outputs.extend(pending.pop(0).result())
                if start and cancelled():
                    raise JobCancelled()
                pending.append(pool.submit(run, items[start:start + CHUNK]))
            for future in pending:
                outputs.extend(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return outputs


def _common(req: dict[str, Any]) -> dict[str, Any]:
    return {"use_activation": req.get("use_activation"),
            "truncate_prompt_tokens": req.get("truncate_prompt_tokens"),
            "truncation_side": req.get("truncation_side"),
            # vLLM's request priority: lower runs earlier; above 0 waits behind interactive work.
            "priority": req.get("priority", 0)}


def run_classify(engine, job: ClaimedJob, cancelled) -> dict[str, Any]:
    req = job.request
    prompts, special = _prompts(engine, req)
    outputs = _chunked(lambda part: engine.classify(part, add_special_tokens=special, **_common(req)),
                       prompts, cancelled)
    return responses.classification(req["request_id"], job.model, outputs)


def run_pooling(engine, job: ClaimedJob, cancelled) -> dict[str, Any]:
    req = job.request
    prompts, special = _prompts(engine, req)
    aggregation = req.get("aggregation_strategy") if req["task"] == "token_classify" else None
    outputs = _chunked(lambda part: engine.encode(part, pooling_task=req["task"], add_special_tokens=special,
                                                  aggregation=aggregation, **_common(req)),
                       prompts, cancelled)
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
            "chat_template_kwargs": req.get("chat_template_kwargs"),
            "priority": req.get("priority", 0)}


def run_score(engine, job: ClaimedJob, cancelled) -> dict[str, Any]:
    req = job.request
    data_1, data_2 = req["data_1"], req["data_2"]
    pairs = list(zip(data_1 * len(data_2) if len(data_1) == 1 else data_1, data_2))
    outputs = _chunked(lambda part: engine.score([q for q, _ in part], [d for _, d in part], **_score_kwargs(req)),
                       pairs, cancelled)
    return responses.score(req["request_id"], job.model, outputs)


def run_rerank(engine, job: ClaimedJob, cancelled) -> dict[str, Any]:
    req = job.request
    outputs = _chunked(lambda part: engine.score([req["query"]], list(part), **_score_kwargs(req)),
                       req["documents"], cancelled)
    return responses.rerank(req["request_id"], job.model, req["documents"], outputs, req.get("top_n", 0))


RUNNERS = {"classify": run_classify, "pooling": run_pooling, "score": run_score, "rerank": run_rerank}


def run(engine, job: ClaimedJob, cancelled: Callable[[], bool]) -> tuple[dict[str, Any], int]:
    """The response body and the prompt tokens it used; JobCancelled if cancelled meanwhile."""
    body = RUNNERS[job.request.get("endpoint", "classify")](engine, job, cancelled)
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
