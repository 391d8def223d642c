"""Plain dataclasses in and out of the engine, and its input error.

Torch-free: the API process may import these to share error messages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class PoolingInputError(ValueError):
    """A request the engine refuses, with vLLM's message and offending parameter.

    Raised on the caller's thread before anything reaches the batcher, so one
    bad request never fails the requests batched with it.
    """

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.message = message
        self.parameter = parameter


@dataclass(slots=True)
class ClassificationOutput:
    probs: list[float]
    label: str | None
    num_prompt_tokens: int


@dataclass(slots=True)
class PoolingOutput:
    # [num_labels] for classify, [n_tokens][num_labels] for token_classify.
    data: list[Any]
    num_prompt_tokens: int
    # Entity groups (token_classify with an aggregation strategy), else None.
    entities: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class ScoringOutput:
    score: float
    num_prompt_tokens: int


@dataclass
class Encoded:
    """One tokenized prompt, ready for the batcher."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None
    # For token_classify entity aggregation only.
    offsets: list[tuple[int, int]] | None = None
    special_mask: list[int] | None = None
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
