"""Batch planning and vectorized collation (no per-row Python tensor work).

The batcher keeps a window's sequences as one flat id tensor plus numpy
arrays (start, length, ...), one entry per sequence. Planning cuts the
length-sorted arrays into batches; collation builds a batch's [B, L] ids as
one gather from the flat tensor, with out-of-row positions pointing at a pad
id appended at its end. Either costs a handful of array ops whatever B is.
"""
from __future__ import annotations

import numpy as np
import torch

from .runner import DeviceBatch

PAD_MULTIPLE = 8


def padded_len(n: int, max_len: int) -> int:
    """Round up to a multiple of 8 (fewer distinct shapes, aligned kernels),
    but never past the model's limit, where position embeddings run out."""
    return max(n, min(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE, max_len))


def padded_lens(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """`padded_len` over an array."""
    rounded = -(-lengths // PAD_MULTIPLE) * PAD_MULTIPLE
    return np.maximum(lengths, np.minimum(rounded, max_len))


def plan_batches(sorted_lengths: np.ndarray, max_tokens: int, max_seqs: int, max_len: int) -> list[tuple[int, int]]:
    """Cut ascending lengths into [start, end) batches of at most max_tokens padded
    tokens and max_seqs sequences; a sequence over the budget still runs, alone."""
    padded = padded_lens(sorted_lengths, max_len)
    bounds, start, n = [], 0, len(sorted_lengths)
    while start < n:
        m = min(max_seqs, n - start)
        # Lengths ascend, so the cost of taking k+1 rows ascends with k and
        # the rows that fit are a prefix.
        fits = np.arange(1, m + 1) * padded[start:start + m] <= max_tokens
        size = m if fits.all() else max(1, int(fits.argmin()))
        bounds.append((start, start + size))
        start += size
    return bounds


def collate(flat_ids: torch.Tensor, flat_types: torch.Tensor | None, starts: np.ndarray, lengths: np.ndarray,
            token_flags: np.ndarray, device: torch.device, max_len: int) -> DeviceBatch:
    """One right-padded batch. `flat_ids`/`flat_types` end with one pad element,
    which every position past a row's length gathers."""
    longest = int(lengths.max())
    # Rows of one length (a lone request, above all) are not padded: with no padding
    # the mask is all ones, and the model is not given one (DeviceBatch.padded).
    unpadded = longest == int(lengths.min())
    width = longest if unpadded else padded_len(longest, max_len)
    cols = np.arange(width)
    mask = cols < lengths[:, None]
    index = torch.from_numpy(np.where(mask, starts[:, None] + cols, len(flat_ids) - 1))
    token_rows = np.flatnonzero(token_flags)
    seq_rows = np.flatnonzero(~token_flags)
    # flatnonzero keeps row order, matching the order the device thread hands results back in.
    host = dict(input_ids=flat_ids[index], attention_mask=torch.from_numpy(mask).long(),
                token_type_ids=flat_types[index] if flat_types is not None else None,
                lengths=torch.from_numpy(lengths.astype(np.int64)))
    return DeviceBatch(
        **{k: move(v, device) for k, v in host.items()},
        seq_rows=move(torch.from_numpy(seq_rows), device) if len(seq_rows) else None,
        token_rows=move(torch.from_numpy(token_rows), device) if len(token_rows) else None,
        padded=not unpadded,
    )


def move(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    if t is None or device.type == "cpu":
        return t
    # Pinned host memory lets the copy run asynchronously, so this thread can
    # go on preparing the next batch while the device still computes.
    return t.pin_memory().to(device, non_blocking=True)
