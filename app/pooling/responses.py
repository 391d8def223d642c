"""Response bodies of vLLM's pooling protocol, built from engine outputs.

Torch-free and duck-typed: outputs need only the attributes named here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def usage(prompt_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0,
            "prompt_tokens_details": None, "completion_tokens_details": None}


def _tokens(outputs: Sequence[Any]) -> int:
    return sum(out.num_prompt_tokens for out in outputs)


def classification(request_id: str, model: str, outputs: Sequence[Any]) -> dict[str, Any]:
    """`ClassificationResponse`: one `data` entry per prompt, in input order."""
    return {
        "id": f"classify-{request_id}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [
            {"index": i, "label": out.label, "probs": list(out.probs), "num_classes": len(out.probs)}
            for i, out in enumerate(outputs)
        ],
        "usage": usage(_tokens(outputs)),
    }


def pooling(request_id: str, model: str, outputs: Sequence[Any], encoded: Sequence[Any]) -> dict[str, Any]:
    """`PoolingResponse`; `encoded[i]` is the data as floats or a base64 string.

    Entity groups (poolq's `aggregation_strategy`) ride along as `entities`;
    vLLM clients ignore the extra key.
    """
    data = []
    for i, (out, item) in enumerate(zip(outputs, encoded)):
        entry = {"index": i, "object": "pooling", "data": item}
        if getattr(out, "entities", None) is not None:
            entry["entities"] = out.entities
        data.append(entry)
    return {"id": f"pooling-{request_id}", "object": "list", "created": int(time.time()), "model": model,
            "data": data, "usage": usage(_tokens(outputs))}


def score(request_id: str, model: str, outputs: Sequence[Any]) -> dict[str, Any]:
    """`ScoreResponse`: pair order, no sorting."""
    return {
        "id": f"score-{request_id}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [{"index": i, "object": "score", "score": out.score} for i, out in enumerate(outputs)],
        "usage": usage(_tokens(outputs)),
    }


def rerank(request_id: str, model: str, documents: Sequence[str], outputs: Sequence[Any],
           top_n: int) -> dict[str, Any]:
    """`RerankResponse`: by relevance, best first, cut to `top_n` (0 = all).

    vLLM 0.33 uses the `score-` prefix here too, and has no object/created.
    """
    results = [
        {"index": i, "document": {"text": doc, "multi_modal": None}, "relevance_score": out.score}
        for i, (doc, out) in enumerate(zip(documents, outputs))
    ]
    results.sort(key=lambda r: r["relevance_score"], reverse=True)
    if 0 < top_n < len(results):
        results = results[:top_n]
    tokens = _tokens(outputs)
    return {"id": f"score-{request_id}", "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results}
