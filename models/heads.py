"""Classifier heads taken from a loaded transformers model, per family.

The engine runs the backbone once per batch and applies the pooler and the
head itself, so pooling can be overridden (vLLM's `seq_pooling_type`) and a
sequence classifier can also serve `token_classify` with the same weights.
A family not listed here falls back to the model's own forward (`None`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

Head = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Heads:
    seq: Head | None    # pooled [N, H] -> logits [N, C]
    token: Head | None  # token states [T, H] -> logits [T, C]


class DenseTanhHead(nn.Module):
    """BERT's pooler (dense + tanh) then the classifier, on an already pooled vector."""

    def __init__(self, dense: nn.Module, classifier: nn.Module):
        super().__init__()
        self.dense = dense
        self.classifier = classifier

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.dense(pooled)))


class SequenceHeadOnTokens(nn.Module):
    """Heads that read `features[:, 0]` themselves (RoBERTa): feed one token per row."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled.unsqueeze(1))


class FromTokenHead(nn.Module):
    """An LM head reduced to the rows of `classifier_from_token` (vLLM's conversion).

    Kept in fp32: for from_2_way_softmax the weight is lm_head[yes] - lm_head[no],
    a difference of two close bf16 rows that would lose most of its digits if
    it were rounded back to bf16.
    """

    def __init__(self, lm_head_weight: torch.Tensor, token_ids: list[int], method: str):
        super().__init__()
        rows = lm_head_weight.detach().float()[token_ids]
        if method == "from_2_way_softmax":
            rows = (rows[1] - rows[0]).unsqueeze(0)  # [false, true] -> z_yes - z_no
        self.register_buffer("weight", rows)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled.float() @ self.weight.T


def _distilbert_head(model: nn.Module) -> Head:
    def head(pooled: torch.Tensor) -> torch.Tensor:
        return model.classifier(torch.relu(model.pre_classifier(pooled)))
    return head


def build_heads(model: nn.Module, architecture: str) -> Heads:
    """Heads for a native `*ForSequenceClassification` / `*ForTokenClassification`."""
    classifier = getattr(model, "classifier", None)
    if architecture.endswith("ForTokenClassification") and isinstance(classifier, nn.Linear):
        return Heads(seq=None, token=classifier)
    score = getattr(model, "score", None)
    if isinstance(score, nn.Linear):  # decoder classifiers: Qwen2/3, Llama, Gemma, Mistral...
        return Heads(seq=score, token=score)
    base = getattr(model, "base_model", None)
    pooler = getattr(base, "pooler", None)
    if isinstance(classifier, nn.Linear) and pooler is not None and hasattr(pooler, "dense"):
        # BERT family. vLLM's token_classify on a seq-cls model runs only the
        # classifier per token, not the pooler.
        return Heads(seq=DenseTanhHead(pooler.dense, classifier), token=classifier)
    if classifier is not None and hasattr(classifier, "out_proj") and hasattr(classifier, "dense"):
        head = SequenceHeadOnTokens(classifier)  # RoBERTa / XLM-R / CamemBERT
        return Heads(seq=head, token=head)
    if isinstance(classifier, nn.Linear) and hasattr(model, "pre_classifier"):
        return Heads(seq=_distilbert_head(model), token=None)
    return Heads(seq=None, token=None)
