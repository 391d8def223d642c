"""Classifier heads taken from a loaded transformers model, per family.

The engine runs the backbone once per batch and applies the pooler and the
head itself, so pooling can be overridden (vLLM's `seq_pooling_type`) and a
sequence classifier can also serve `token_classify` with the same weights.
A family not listed here, or one with a layer the head would skip, falls
back to the model's own forward (`None`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

Head = nn.Module


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


def _distilbert_head(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.pre_classifier, nn.ReLU(), model.classifier)


def _token_head(model: nn.Module, classifier: nn.Module) -> nn.Module:
    # ModernBERT applies its prediction head (dense + act + norm) to every
    # token before the classifier; BERT-like families have no such `head`.
    pre = getattr(model, "head", None)
    return nn.Sequential(pre, classifier) if isinstance(pre, nn.Module) else classifier


def _choose(model: nn.Module, architecture: str) -> Heads:
    classifier = getattr(model, "classifier", None)
    if architecture.endswith("ForTokenClassification") and isinstance(classifier, nn.Linear):
        return Heads(seq=None, token=_token_head(model, classifier))
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


def _skipped_layers(model: nn.Module, heads: Heads) -> list[str]:
    """Top-level layers with weights that neither the backbone nor a head uses."""
    used = {id(p) for m in (model.base_model, heads.seq, heads.token) if m is not None for p in m.parameters()}
    return [name for name, child in model.named_children()
            if any(id(p) not in used for p in child.parameters())]


def build_heads(model: nn.Module, architecture: str) -> Heads:
    """Heads for a native `*ForSequenceClassification` / `*ForTokenClassification`.

    A head that would skip one of the model's layers (a family whose shape
    only looks like a known one) is refused, so the model's own forward runs
    instead of silently wrong logits.
    """
    heads = _choose(model, architecture)
    skipped = _skipped_layers(model, heads) if heads.seq is not None or heads.token is not None else []
    if skipped:
        log.info("%s: running the model's own forward; the pooling head would skip %s", architecture, skipped)
        return Heads(seq=None, token=None)
    return heads
