"""Response bodies of vLLM's pooling protocol, built from engine outputs.

Torch-free and duck-typed: outputs need only the attributes named here, so
the API can also build these from stored results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def usage(prompt_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0,
            "prompt_tokens_details": None, "completion_tokens_details": None}


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
        "usage": usage(sum(out.num_prompt_tokens for out in outputs)),
    }
