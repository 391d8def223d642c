"""One forward pass over a collated batch: backbone, pooler, head.

`SplitRunner` runs the backbone and applies the engine's pooler and the
family's head, so the pooling type can be overridden. `WholeModelRunner`
runs an unknown family's own forward and uses its logits as they come, with
the model's built-in pooling (no override possible).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

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
    # False when every row fills the width: the mask is all ones, and the model is not given
    # it, so it neither builds nor checks one (one text, tiny model, CPU: ~0.13 ms of 1.4).
    padded: bool = True


def _accepts_token_types(module: nn.Module) -> bool:
    return "token_type_ids" in inspect.signature(module.forward).parameters


def _model_inputs(b: DeviceBatch, uses_token_types: bool) -> dict:
    kwargs = {"input_ids": b.input_ids}
    if b.padded:
        kwargs["attention_mask"] = b.attention_mask
    if uses_token_types and b.token_type_ids is not None:
        kwargs["token_type_ids"] = b.token_type_ids
    return kwargs


def _rows(rows: torch.Tensor, hidden: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> tuple:
    """`rows` of the batch's hidden states, lengths and mask. Rows ascend (collate's
    flatnonzero), so as many rows as the batch has are all of it, in order: no copy."""
    if rows.shape[0] == hidden.shape[0]:
        return hidden, lengths, mask
    return hidden[rows], lengths[rows], mask[rows]


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


Direct = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def direct_forward(backbone: nn.Module, uses_token_types: bool) -> Direct | None:
    """The backbone's embeddings then its encoder, called directly, for batches with no
    padding; None where the backbone is not built so or the direct call does not give its
    forward's own output on a probe.

    With no mask to build, what a BERT-like model's forward adds around those two calls
    (its decorators' signature inspection, the mask helpers, the pooler we do not use,
    the output dataclass) is a fifth of a one-text forward on a small model: 1.87 ms
    against 1.51 on the tiny model, one CPU thread.
    """
    embeddings, encoder = getattr(backbone, "embeddings", None), getattr(backbone, "encoder", None)
    if not isinstance(embeddings, nn.Module) or not isinstance(encoder, nn.Module):
        return None

    def run(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = encoder(embeddings(**kwargs))
        return out[0] if isinstance(out, tuple) else out.last_hidden_state

    try:
        config = backbone.config
        device = next(backbone.parameters()).device
        ids = (torch.arange(1, 14, device=device) * 7919 % config.vocab_size).reshape(1, 13)
        types = None
        if uses_token_types:
            types = (torch.arange(13, device=device) >= 6).long().reshape(1, 13)
            types = types.clamp(max=max(getattr(config, "type_vocab_size", 1) - 1, 0))
        with torch.inference_mode():
            kwargs = {"input_ids": ids, **({"token_type_ids": types} if types is not None else {})}
            expected = backbone(**kwargs).last_hidden_state
            got = run(ids, types)
    except Exception:  # noqa: BLE001 - any family whose pieces do not take these calls
        return None
    same = got.shape == expected.shape and torch.allclose(got.float(), expected.float(), rtol=1e-3, atol=1e-4)
    return run if same else None


class SplitRunner:
    def __init__(self, backbone: nn.Module, heads: Heads, pooler: Pooler):
        self.backbone = backbone
        self.heads = heads
        self.pooler = pooler
        self.uses_token_types = _accepts_token_types(backbone)
        self.threads = CpuThreads(backbone)
        self.direct = direct_forward(backbone, self.uses_token_types)

    def __call__(self, b: DeviceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.threads.fit(b)
        if self.direct is not None and not b.padded:
            hidden = self.direct(b.input_ids, b.token_type_ids if self.uses_token_types else None)
        else:
            hidden = self.backbone(**_model_inputs(b, self.uses_token_types)).last_hidden_state
        seq = tok = None
        if b.seq_rows is not None:
            h, lengths, mask = _rows(b.seq_rows, hidden, b.lengths, b.attention_mask)
            seq = self.heads.seq(self.pooler(h, lengths, mask)).float()
        if b.token_rows is not None:
            h, _, mask = _rows(b.token_rows, hidden, b.lengths, b.attention_mask)
            tok = self.heads.token(all_tokens(h, mask)).float()
        return seq, tok


class WholeModelRunner:
    def __init__(self, model: nn.Module):
        self.model = model
        self.uses_token_types = _accepts_token_types(model)
        self.threads = CpuThreads(model)

    def __call__(self, b: DeviceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.threads.fit(b)
        logits = self.model(**_model_inputs(b, self.uses_token_types)).logits.float()
        seq = logits[b.seq_rows] if b.seq_rows is not None else None
        tok = None
        if b.token_rows is not None:
            tok = all_tokens(logits[b.token_rows], b.attention_mask[b.token_rows])
        return seq, tok
