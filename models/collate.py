"""Batch planning and vectorized collation (no per-row Python tensor work).

Rows are right padded: the collator scatters one flat concatenation of all
ids into a [B, L] tensor through a boolean mask, so the cost is a handful of
tensor ops whatever B is.
"""
from __future__ import annotations

import torch

from .runner import DeviceBatch

PAD_MULTIPLE = 8


def padded_len(n: int, max_len: int) -> int:
    """Round up to a multiple of 8 (fewer distinct shapes, aligned kernels),
    but never past the model's limit, where position embeddings run out."""
    return max(n, min(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE, max_len))


def plan_batches(items: list, max_tokens: int, max_seqs: int, max_len: int) -> list[list]:
    """Cut length-sorted items into batches of at most max_tokens padded tokens."""
    batches, start = [], 0
    while start < len(items):
        end = start + 1  # a sequence over the budget still runs, alone
        while (end < len(items) and end - start < max_seqs
               and (end - start + 1) * padded_len(items[end].length, max_len) <= max_tokens):
            end += 1
        batches.append(items[start:end])
        start = end
    return batches


def _scatter(flat: torch.Tensor, mask: torch.Tensor, fill: int) -> torch.Tensor:
    out = torch.full(mask.shape, fill, dtype=flat.dtype)
    out[mask] = flat
    return out


def collate(items: list, device: torch.device, max_len: int, pad_id: int = 0) -> DeviceBatch:
    lengths = torch.tensor([it.length for it in items], dtype=torch.long)
    width = padded_len(int(lengths.max()), max_len)
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    input_ids = _scatter(torch.cat([it.ids for it in items]), mask, pad_id)
    token_type_ids = None
    if any(it.type_ids is not None for it in items):
        types = [it.type_ids if it.type_ids is not None else torch.zeros_like(it.ids) for it in items]
        token_type_ids = _scatter(torch.cat(types), mask, 0)
    flags = torch.tensor([it.token for it in items], dtype=torch.bool)
    token_rows = flags.nonzero().squeeze(1)
    seq_rows = (~flags).nonzero().squeeze(1)
    # nonzero keeps row order, matching the order the device thread hands results back in.
    host = dict(input_ids=input_ids, attention_mask=mask.long(), token_type_ids=token_type_ids,
                lengths=lengths)
    return DeviceBatch(
        **{k: _move(v, device) for k, v in host.items()},
        seq_rows=_move(seq_rows, device) if len(seq_rows) else None,
        token_rows=_move(token_rows, device) if len(token_rows) else None,
    )


def _move(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    if t is None or device.type == "cpu":
        return t
    # Pinned host memory lets the copy run asynchronously, so this thread can
    # go on preparing the next batch while the device still computes.
    return t.pin_memory().to(device, non_blocking=True)
