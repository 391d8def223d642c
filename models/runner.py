"""One forward pass over a collated batch: backbone, pooler, head.

`SplitRunner` runs the backbone and applies the engine's pooler and the
family's head, so the pooling type can be overridden. `WholeModelRunner`
runs an unknown family's own forward and uses its logits as they come, with
the model's built-in pooling (no override possible).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from .heads import Heads
from .poolers import Pooler, all_tokens


@dataclass
class DeviceBatch:
    input_ids: torch.Tensor         # [B, L] right padded
    attention_mask: torch.Tensor    # [B, L]
    token_type_ids: torch.Tensor | None
    lengths: torch.Tensor           # [B]
    seq_rows: torch.Tensor | None   # rows pooled to one vector
    token_rows: torch.Tensor | None  # rows returned per token


def _accepts_token_types(module: nn.Module) -> bool:
    return "token_type_ids" in inspect.signature(module.forward).parameters


# Below this much work a forward runs no faster on several CPU threads: each
# op takes microseconds and waking the other threads costs as much. Those
# threads then spin-wait, burning a core the API or the database could use
# (measured on 2 cores: a one-text batch of a 2-layer, 32-wide model took
# 1.8 ms on one thread, and the same wall time but twice the CPU on two;
# MiniLM-L6 already gains from a second thread at 16 tokens, ~340 MFLOP).
SMALL_FORWARD_FLOPS = 150e6


class CpuThreads:
    """Intra-op threads per batch on a CPU: one for a small forward, all otherwise."""

    def __init__(self, model: nn.Module):
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        skip = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
        # ~2 FLOPs per weight per token; the embedding lookup is no arithmetic.
        self.flops_per_token = 2 * sum(p.numel() for p in model.parameters() if id(p) not in skip)
        self.most = torch.get_num_threads()

    def fit(self, b: "DeviceBatch") -> None:
        # Set on every batch (a fraction of a microsecond): the setting is the
        # calling thread's, and a runner may be called from more than one.
        if b.input_ids.device.type == "cpu":
            small = b.input_ids.numel() * self.flops_per_token < SMALL_FORWARD_FLOPS
            torch.set_num_threads(1 if small else self.most)


class SplitRunner:
    def __init__(self, backbone: nn.Module, heads: Heads, pooler: Pooler):
        self.backbone = backbone
        self.heads = heads
        self.pooler = pooler
        self.uses_token_types = _accepts_token_types(backbone)
        self.threads = CpuThreads(backbone)

    def __call__(self, b: DeviceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.threads.fit(b)
        kwargs = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
        if self.uses_token_types and b.token_type_ids is not None:
            kwargs["token_type_ids"] = b.token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        seq = tok = None
        if b.seq_rows is not None:
            rows = b.seq_rows
            pooled = self.pooler(hidden[rows], b.lengths[rows], b.attention_mask[rows])
            seq = self.heads.seq(pooled).float()
        if b.token_rows is not None:
            rows = b.token_rows
            tok = self.heads.token(all_tokens(hidden[rows], b.attention_mask[rows])).float()
        return seq, tok


class WholeModelRunner:
    def __init__(self, model: nn.Module):
        self.model = model
        self.uses_token_types = _accepts_token_types(model)
        self.threads = CpuThreads(model)

    def __call__(self, b: DeviceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.threads.fit(b)
        kwargs = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
        if self.uses_token_types and b.token_type_ids is not None:
            kwargs["token_type_ids"] = b.token_type_ids
        logits = self.model(**kwargs).logits.float()
        seq = logits[b.seq_rows] if b.seq_rows is not None else None
        tok = None
        if b.token_rows is not None:
            tok = all_tokens(logits[b.token_rows], b.attention_mask[b.token_rows])
        return seq, tok
