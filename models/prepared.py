"""A request tokenized and validated but not yet run, for callers that schedule it themselves.

The offline API (`PoolingEngine.classify` and friends) runs a request whole.
A serving scheduler instead holds many requests at once and feeds the
batcher a slice of each at a time (`PoolingEngine.submit`), so a large
request never stands in front of a small one for longer than a slice. A
`Prepared` is what it holds: the sequences flat (one id tensor, lengths and
starts), their token counts for budgeting, and how to turn the raw outputs
of all its slices, in order, into the request's outputs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .types import Encoded


class Prepared:
    """The sequences are held sorted by length (their outputs come back in the request's order):
    a scheduler hands out slices of consecutive sequences, and a batch made of slices of
    similar lengths packs as tightly as the offline call's windows, where a slice of the
    request's own order would mix short and long ones and pad each batch to the longest."""

    __slots__ = ("ids", "type_ids", "lengths", "starts", "token", "encoded", "_finish", "_request_lengths",
                 "_restore")

    def __init__(self, ids: torch.Tensor, type_ids: torch.Tensor | None, lengths: list[int], token: bool,
                 encoded: list[Encoded], finish: Callable[[list[int], list[Encoded], Any], list]):
        self._request_lengths = lengths
        self._restore = None  # sorted position -> request position, inverted; None: already in order
        order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable") if len(lengths) > 1 else None
        if order is not None and (order[1:] < order[:-1]).any():
            starts = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
            sorted_lengths = np.asarray(lengths, dtype=np.int64)[order]
            # Every token of every sequence, in the sorted order of sequences: token k of the
            # sorted layout comes from its sequence's old start plus its offset in the new one.
            new_starts = np.concatenate(([0], np.cumsum(sorted_lengths)[:-1]))
            gather = torch.from_numpy(np.arange(int(starts[-1])) + np.repeat(starts[order] - new_starts,
                                                                              sorted_lengths))
            ids = ids[gather]
            type_ids = None if type_ids is None else type_ids[gather]
            lengths = sorted_lengths.tolist()
            self._restore = torch.from_numpy(np.argsort(order, kind="stable"))
        self.ids = ids
        self.type_ids = type_ids
        self.lengths = lengths
        self.starts = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
        self.token = token
        self.encoded = encoded  # complete only where the finish needs it (offsets for entities)
        self._finish = finish

    def __len__(self) -> int:
        return len(self.lengths)

    def tokens(self, begin: int = 0, end: int | None = None) -> int:
        """Real tokens of sequences [begin, end) (in the sorted order)."""
        return int(self.starts[len(self.lengths) if end is None else end] - self.starts[begin])

    def slice_args(self, begin: int, end: int, priority: int) -> tuple:
        """`Batcher.submit`'s arguments for sequences [begin, end): views, no copies."""
        lo, hi = int(self.starts[begin]), int(self.starts[end])
        return (self.ids[lo:hi], self.lengths[begin:end], self.token,
                None if self.type_ids is None else self.type_ids[lo:hi], priority)

    def finish(self, parts: list) -> list:
        """The request's outputs from the raw outputs of its slices, in slice order."""
        if self.token:
            raw = [row for part in parts for row in part]
            if self._restore is not None:
                raw = [raw[i] for i in self._restore.tolist()]
        else:
            raw = parts[0] if len(parts) == 1 else torch.cat(parts)
            if self._restore is not None:
                raw = raw[self._restore]
        return self._finish(self._request_lengths, self.encoded, raw)
