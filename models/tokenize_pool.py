"""Tokenization in helper processes, for large text requests on fast devices.

One Python process tops out near 1.5M tokens/s: the Rust encoder releases
the GIL, but turning its encodings into Python id lists does not. A GPU runs
a MiniLM-sized encoder at ~6M tokens/s, so a single process starves it. Like
vLLM, which tokenizes in its API server processes rather than in the engine,
the engine spreads chunks of texts over a few processes.

Each helper holds only the Rust tokenizer (rebuilt from its JSON) and numpy,
never torch or the model, and encodes single-threaded (the processes are the
parallelism). A chunk comes back as two int32 arrays, flat ids and lengths,
which pickle as two buffers instead of one Python int per token.

Only the plain path goes through the pool: text prompts, no offsets. At
start the engine checks the pool's ids against the transformers tokenizer on
a sample and keeps tokenizing in process if they differ (a tokenizer with
Python-side preprocessing).

This module must stay torch-free: helpers import it.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

_tokenizer: Any = None  # the helper process's own tokenizer


def _init_helper(tokenizer_json: str, parent_pid: int) -> None:
    # Read by the tokenizers library at call time: no Rust thread pool per
    # helper, or N helpers x all cores threads would fight for the CPU.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="poolq-orphan-check", daemon=True).start()
    from tokenizers import Tokenizer

    global _tokenizer
    _tokenizer = Tokenizer.from_str(tokenizer_json)
    _tokenizer.no_padding()


def _exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """End this helper once its engine's process is gone.

    A worker killed outright (SIGKILL, the OOM killer) runs no shutdown, and
    an idle helper would wait forever: it holds the write end of its own
    call queue, so it never reads end-of-file there. Reparenting is the sign.
    """
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os._exit(0)


def _encode(texts: Sequence[str], max_length: int, side: str, add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    return encode_plain(_tokenizer, texts, max_length, side, add_special_tokens)


def encode_plain(tok: Any, texts: Sequence[str], max_length: int, side: str,
                 add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    """Text prompts through a Rust `tokenizers.Tokenizer` as transformers' fast tokenizer encodes
    them with truncation=True (no pairs, no offsets, no padding): flat int32 ids and lengths.
    Sets the tokenizer's truncation, so each thread or process must call it with its own."""
    tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction=side)
    if tok.padding is not None:
        tok.no_padding()
    # encode_batch_fast skips the offsets, which the plain path never reads.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    ids = [e.ids for e in encode(list(texts), add_special_tokens=add_special_tokens)]
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


# What a tokenizer must encode exactly as transformers does before its plain path is trusted.
AGREEMENT_SAMPLE = ("poolq checks its tokenizer helpers", "Ünïcode, CJK 漢字 and emoji 🙂 too", "x " * 600)


def agrees(tokenizer: Any, encode, max_length: int, side: str) -> bool:
    """Whether `encode(texts, max_length, side, True)` (flat ids, lengths) gives exactly the ids
    the transformers `tokenizer` gives for AGREEMENT_SAMPLE: a tokenizer with Python-side
    preprocessing would not."""
    texts = list(AGREEMENT_SAMPLE)
    tokenizer.truncation_side = side
    expected = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    flat, lengths = encode(texts, max_length, side, True)
    got = np.split(flat, np.cumsum(lengths)[:-1])
    return len(got) == len(expected) and all(g.tolist() == e for g, e in zip(got, expected))


def _ping() -> int:
    return os.getpid()


def helper_budget() -> int:
    """Helpers one process may start: the cores it may run on (a container's
    cpuset, not the host's count) less four for the engine's own threads, at
    most 12 (~2.9M tokens/s: about what half of MiniLM-L6's ceiling on an H100
    takes)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(12, max(0, cores - 4))


class TokenizerPool:
    """`processes` helpers encoding text chunks; `submit` returns a future of (flat ids, lengths)."""

    def __init__(self, tokenizer: Any, processes: int):
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        if backend is None or not hasattr(backend, "to_str"):
            raise ValueError("the tokenizer has no Rust backend to run in helper processes")
        # spawn, not fork: the parent holds CUDA state and running threads.
        self._executor = ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_helper, initargs=(backend.to_str(), os.getpid()))
        self.processes = processes
        self.broken = False
        # Start every helper now: spawning takes a second or more, which
        # belongs to engine start, not to the first request.
        for f in [self._executor.submit(_ping) for _ in range(processes)]:
            f.result()

    def submit(self, texts: Sequence[str], max_length: int, side: str, add_special_tokens: bool) -> Future:
        return self._executor.submit(_encode, texts, max_length, side, add_special_tokens)

    def matches(self, tokenizer: Any, max_length: int, side: str) -> bool:
        """Whether the helpers produce exactly the ids the transformers tokenizer gives."""
        return agrees(tokenizer, lambda *args: self.submit(*args).result(), max_length, side)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["TokenizerPool", "BrokenProcessPool", "encode_plain", "agrees"]
