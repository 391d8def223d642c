"""Prompt normalization, tokenization and validation, on the caller's thread.

Every check raises `PoolingInputError` with vLLM's message before anything is
submitted, so a bad request never reaches (or fails) a shared batch.
"""
from __future__ import annotations

import copy
import threading
from itertools import chain
from typing import Any, Callable, Sequence

import torch

from .types import Encoded, PoolingInputError

Prompt = str | list[int]


class ThreadTokenizers:
    """One tokenizer copy per calling thread.

    A fast tokenizer call sets truncation/padding state on the shared Rust
    object before encoding; two threads with different truncation settings
    would race on it, so each thread encodes with its own copy. The Rust
    batch encode releases the GIL, so the copies also tokenize in parallel.
    """

    def __init__(self, base: Any):
        self.base = base
        self.default_side = getattr(base, "truncation_side", "right")
        self._local = threading.local()
        self._spares: list[Any] = []
        self._lock = threading.Lock()

    def get(self, truncation_side: str | None = None) -> Any:
        tok = getattr(self._local, "tokenizer", None)
        if tok is None:
            with self._lock:
                tok = self._spares.pop() if self._spares else None
            self._local.tokenizer = tok = tok if tok is not None else copy.deepcopy(self.base)
        tok.truncation_side = truncation_side or self.default_side
        return tok

    def make_spares(self, count: int, warm: Callable[[Any], None] | None = None) -> None:
        """Copies made ahead, each warmed by `warm` (run it on a thread of its own): a thread's
        first call takes one instead of paying the copy in some request's time (a BERT
        tokenizer's copy and ASCII twin took ~0.1 s of a busy worker's first batch chunk)."""
        for _ in range(count):
            tok = copy.deepcopy(self.base)
            if warm is not None:
                warm(tok)
            with self._lock:
                self._spares.append(tok)


def normalize_prompts(prompts: Any) -> list[Prompt]:
    """`str | list[str] | list[int] | list[list[int]]` -> one entry per prompt."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise PoolingInputError("prompts must be a string, a list of strings or token ids", "input")
    if not prompts:
        raise PoolingInputError("You must pass at least one prompt", "input")
    if all(isinstance(p, int) and not isinstance(p, bool) for p in prompts):
        return [list(prompts)]
    out: list[Prompt] = []
    for p in prompts:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            out.append(list(p))
        else:
            raise PoolingInputError("each prompt must be a string or a list of token ids", "input")
    return out


def resolve_truncation(truncate_prompt_tokens: int | None, max_model_len: int) -> int | None:
    if truncate_prompt_tokens is None:
        return None
    if truncate_prompt_tokens < -1:
        raise PoolingInputError("truncate_prompt_tokens must be -1 (max_model_len) or a non-negative integer",
                                "truncate_prompt_tokens")
    if truncate_prompt_tokens == -1:
        return max_model_len
    if truncate_prompt_tokens > max_model_len:
        raise PoolingInputError("truncate_prompt_tokens value is greater than max_model_len. "
                                "Please request a smaller truncation size.", "truncate_prompt_tokens")
    return truncate_prompt_tokens


def check_length(n: int, max_model_len: int) -> None:
    if n == 0:
        raise PoolingInputError("The decoder prompt cannot be empty", "input")
    if n > max_model_len:
        # vLLM tokenizes with max_length = max_model_len + 1, hence "at least".
        raise PoolingInputError(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"at least {n} input tokens, which exceeds this limit even without any output tokens. "
            "Please reduce the length of the input prompt.", "input_tokens")


def check_vocab(ids: list[int], vocab_size: int) -> None:
    if ids and (max(ids) >= vocab_size or min(ids) < 0):
        bad = max(ids) if max(ids) >= vocab_size else min(ids)
        raise PoolingInputError(f"Token id {bad} is out of vocabulary", "input")


def truncate_ids(ids: list[int], limit: int | None, side: str) -> list[int]:
    if limit is None or len(ids) <= limit:
        return ids
    return ids[len(ids) - limit:] if side == "left" else ids[:limit]


def tokenize(tok: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, *, limit: int | None,
             max_model_len: int, add_special_tokens: bool = True, with_offsets: bool = False) -> list[Encoded]:
    """Batched fast-tokenizer call; without a truncation request, read one token
    past the limit so over-length input is detected without encoding it all."""
    enc = tok(list(texts), list(pairs) if pairs is not None else None, add_special_tokens=add_special_tokens,
              truncation=True, max_length=limit if limit is not None else max_model_len + 1,
              return_attention_mask=False, return_token_type_ids=pairs is not None,
              return_offsets_mapping=with_offsets, return_special_tokens_mask=with_offsets)
    types = enc.get("token_type_ids") if pairs is not None else None
    out = []
    for i, ids in enumerate(enc["input_ids"]):
        out.append(Encoded(
            input_ids=ids, token_type_ids=types[i] if types is not None else None,
            offsets=enc["offset_mapping"][i] if with_offsets else None,
            special_mask=enc["special_tokens_mask"][i] if with_offsets else None,
            text=texts[i] if with_offsets else None))
    return out


def to_tensors(encoded: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batcher's input: all ids back to back (and token types, for pairs)."""
    ids = torch.tensor(list(chain.from_iterable(e.input_ids for e in encoded)), dtype=torch.long)
    if encoded[0].token_type_ids is None:
        return ids, None
    return ids, torch.tensor(list(chain.from_iterable(e.token_type_ids for e in encoded)), dtype=torch.long)
