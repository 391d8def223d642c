"""Sequence and token pooling methods plus a registry (vLLM's CLS/LAST/MEAN/ALL).

Batches are always right padded by the collator, so the last real token of
row i sits at `lengths[i] - 1` whatever the tokenizer's padding side.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Pooler(ABC):
    """Maps hidden states [B, L, H] of a batch to one vector per row, [B, H]."""

    name = ""

    @abstractmethod
    def __call__(self, hidden: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool each row of `hidden`; `lengths` [B] and `mask` [B, L] mark real tokens."""


class CLSPooler(Pooler):
    name = "CLS"

    def __call__(self, hidden, lengths, mask):
        return hidden[:, 0]


class LastPooler(Pooler):
    name = "LAST"

    def __call__(self, hidden, lengths, mask):
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, lengths - 1]


class MeanPooler(Pooler):
    name = "MEAN"

    def __call__(self, hidden, lengths, mask):
        # Sum in fp32: a bf16 sum over hundreds of tokens loses digits.
        summed = (hidden.float() * mask.unsqueeze(-1)).sum(dim=1)
        return (summed / lengths.unsqueeze(-1)).to(hidden.dtype)


def all_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token pooling (ALL): every real token of every row, flattened to [T, H]."""
    return hidden[mask.bool()]


POOLERS: dict[str, type[Pooler]] = {p.name: p for p in (CLSPooler, LastPooler, MeanPooler)}

# Encoder families vLLM pools at CLS (default_pooling_type "CLS"); all other
# classifiers, decoders included, pool the LAST token.
_CLS_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra",
                    "deberta", "deberta-v2", "modernbert", "albert", "mpnet", "ernie", "nomic_bert"}


def get_pooler(name: str) -> Pooler:
    try:
        return POOLERS[name.upper()]()
    except KeyError:
        raise ValueError(f"unknown pooling_type {name!r}; expected one of {sorted(POOLERS)}") from None


def default_pooling_type(model_type: str) -> str:
    return "CLS" if model_type in _CLS_MODEL_TYPES else "LAST"
