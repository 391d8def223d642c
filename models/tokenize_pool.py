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
import sys
import threading
import time
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from typing import Any, Sequence

import numpy as np

from .word_cache import WordCache, put_texts, word_cache

log = logging.getLogger(__name__)

_tokenizer: Any = None  # the helper process's own tokenizer

# In process, the word cache (models/word_cache.py) holds the GIL for its whole call, ~23 us a
# text, where the Rust tokenizer lets go of it for all but ~4: a thread tokenizing a 256-text
# chunk from the cache held up the device thread at every batch, and the engine's 5,000-text
# call on 2 vCPUs took 1.22 s against 1.09 s with the Rust tokenizer (5 alternating calls each),
# for 15% less CPU. So in process only calls of up to this many texts (an interactive request,
# which it makes ~40 us faster) take it; a helper process takes it for every call, and the engine
# sends any call of more texts to a helper where it has one.
IN_PROCESS_TEXTS = 16
_cache_texts: int | None = IN_PROCESS_TEXTS


def _init_helper(tokenizer_json: str, parent_pid: int) -> None:
    # Read by the tokenizers library at call time: no Rust thread pool per
    # helper, or N helpers x all cores threads would fight for the CPU.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="poolq-orphan-check", daemon=True).start()
    from tokenizers import Tokenizer

    global _tokenizer, _cache_texts
    _tokenizer = Tokenizer.from_str(tokenizer_json)
    _tokenizer.no_padding()
    _cache_texts = None  # no other thread here to hold up: the word cache for calls of any size


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
    texts = list(texts)
    twin = ascii_twin(tok)
    normalized = [twin.normalized(t) for t in texts] if twin is not None else [None] * len(texts)
    fast = [i for i, t in enumerate(normalized) if t is not None]
    if not fast:
        return _flat(_encode_ids(tok, texts, max_length, side, add_special_tokens))
    if len(fast) == len(texts):
        return _twin_encoded(twin, normalized, max_length, side, add_special_tokens)
    # Some texts the twin does not take (not ASCII, an added token): each part as arrays, put
    # back in the caller's order. Through per-text lists, the word cache's arrays of a 256-text
    # chunk with a few such texts went to lists and back (~5% of the chunk's CPU, run 25).
    slow = [i for i, t in enumerate(normalized) if t is None]
    return _in_order(len(texts), (fast, _twin_encoded(twin, [normalized[i] for i in fast], max_length, side,
                                                      add_special_tokens)),
                     (slow, _flat(_encode_ids(tok, [texts[i] for i in slow], max_length, side, add_special_tokens))))


def encode_pairs_plain(tok: Any, firsts: Sequence[str], seconds: Sequence[str],
                       max_length: int) -> list[tuple[list[int], list[int]] | None]:
    """Each text pair's ids and token types through the word cache, as the tokenizer encodes
    them with special tokens; None for a pair it cannot answer: a text the twin does not
    take, a pair longer than `max_length` (truncating is the tokenizer's), or every pair of a
    tokenizer without a twin or a pair frame."""
    twin = ascii_twin(tok)
    if twin is None or twin.words is None or twin.words.pair is None:
        return [None] * len(firsts)
    normalized = {text: twin.normalized(text) for text in (*firsts, *seconds)}  # a 1:N query once
    plain = [i for i, pair in enumerate(zip(firsts, seconds))
             if normalized[pair[0]] is not None and normalized[pair[1]] is not None]
    out: list[tuple[list[int], list[int]] | None] = [None] * len(firsts)
    if not plain:
        return out
    ids, types, lengths = twin.words.encode_pairs(twin.tokenizer, [normalized[firsts[i]] for i in plain],
                                                  [normalized[seconds[i]] for i in plain])
    bounds = np.cumsum(lengths)[:-1]
    for i, pair_ids, pair_types, length in zip(plain, np.split(ids, bounds), np.split(types, bounds), lengths):
        if length <= max_length:
            out[i] = (pair_ids.tolist(), pair_types.tolist())
    return out


def _takes_cache(twin: "_Twin", count: int) -> bool:
    return twin.words is not None and (_cache_texts is None or count <= _cache_texts)


def _twin_encoded(twin: "_Twin", texts: list[str], max_length: int, side: str,
                  add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    """Normalized ASCII texts' flat ids and lengths: from the word cache where it takes them."""
    if _takes_cache(twin, len(texts)):
        encoded = twin.words.encode(twin.tokenizer, texts, max_length, side, add_special_tokens)
        if encoded is not None:
            return encoded
    return _flat(_encode_ids(twin.tokenizer, texts, max_length, side, add_special_tokens))


def _flat(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    return np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())), lengths


def _in_order(count: int, *parts: tuple[list[int], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids and lengths of `count` texts from parts that each hold some of them: (their
    positions among the texts, in order; their flat ids and lengths)."""
    lengths = np.empty(count, dtype=np.int32)
    for rows, (_, part_lengths) in parts:
        lengths[rows] = part_lengths
    starts = np.cumsum(lengths, dtype=np.int64) - lengths
    flat = np.empty(int(lengths.sum(dtype=np.int64)), dtype=np.int32)
    for rows, (part_flat, part_lengths) in parts:
        put_texts(flat, None, starts[rows], part_flat, part_lengths)
    return flat, lengths


def _encode_ids(tok: Any, texts: list[str], max_length: int, side: str, add_special_tokens: bool) -> list[list[int]]:
    tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction=side)
    if tok.padding is not None:
        tok.no_padding()
    # encode_batch_fast skips the offsets, which the plain path never reads.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]


# -- ASCII text past BERT's normalizer ----------------------------------------
# BERT's normalizer (clean_text, CJK spacing, NFD and accent stripping, lowercasing) walks
# every character through Unicode tables: on the tiny model's ~78-token texts, a third of
# the tokenizer's CPU, and the tokenizer costs the host more than the tiny model's forward.
# On ASCII text without control characters (tab, newline and return aside) every step but
# lowercasing is the identity, and lowercasing is str.lower(); such text goes, lowered where
# the normalizer lowers, through a twin of the tokenizer without a normalizer. The
# whitespace the normalizer turns into spaces is split on by BERT's pre-tokenizer either
# way. Any other normalizer, or text, goes the usual way; `agrees` checks the twin at start.

# Added tokens ([CLS], [MASK], ...) are matched before the normalizer runs: a text that
# contains one, in any case, goes the usual way.

_TABS = str.maketrans("\t\n\r", "   ")


class _Twin:
    def __init__(self, tokenizer: Any, lowercase: bool, added: tuple[str, ...], words: WordCache | None = None):
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        self.added = added  # lowercased
        self.words = words  # BERT's WordPiece a word at a time (models/word_cache.py), where it applies

    def normalized(self, text: str) -> str | None:
        """What the normalizer would make of `text`, or None where this twin must not take it."""
        if not text.isascii() or not (text.isprintable() or text.translate(_TABS).isprintable()):
            return None
        lowered = text.lower()
        if any(token in lowered for token in self.added):
            return None
        return lowered if self.lowercase else text

    @staticmethod
    def of(tok: Any) -> "_Twin | None":
        try:
            import json

            from tokenizers import Tokenizer

            serialized = tok.to_str()  # the whole vocabulary: once
            config = json.loads(serialized)
            normalizer = config.get("normalizer") or {}
            if normalizer.get("type") != "BertNormalizer":
                return None
            twin = Tokenizer.from_str(serialized)
            twin.normalizer = None
            added = tuple(t["content"].lower() for t in config.get("added_tokens") or () if t.get("content"))
            return _Twin(twin, bool(normalizer.get("lowercase", True)), added, word_cache(config, twin))
        except Exception:  # noqa: BLE001 - not a tokenizer we can copy: the usual path
            return None


# Weak: a twin goes with its tokenizer (an engine closed and loaded again makes new ones).
_twins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_twins_lock = threading.Lock()
_NO_TWIN = object()


def ascii_twin(tok: Any) -> _Twin | None:
    """The tokenizer's twin without its normalizer, made once per tokenizer (each thread or
    helper has its own tokenizer, and so its own twin, truncation setting and all)."""
    twin = _twins.get(tok, _NO_TWIN)
    if twin is _NO_TWIN:
        twin = _Twin.of(tok)
        with _twins_lock:
            _twins[tok] = twin
    return twin


# What a tokenizer must encode exactly as transformers does before its plain path is trusted:
# each text alone too, so the ASCII twin's path (all-ASCII calls) is checked as well as the usual one.
AGREEMENT_SAMPLE = ("poolq checks its tokenizer helpers", "Ünïcode, CJK 漢字 and emoji 🙂 too", "x " * 600,
                    "MiXeD Case, PUNCTUATION!? (braces) [1.5e3] 'quotes' & tabs\tnew\nlines\r\nend",
                    "a [MASK] and a [mask], [CLS] inside [SEP] text")


def agrees(tokenizer: Any, encode, max_length: int, side: str) -> bool:
    """Whether `encode(texts, max_length, side, True)` (flat ids, lengths) gives exactly the ids
    the transformers `tokenizer` gives for AGREEMENT_SAMPLE: a tokenizer with Python-side
    preprocessing would not."""
    texts = list(AGREEMENT_SAMPLE)
    tokenizer.truncation_side = side
    expected = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    for batch, want in [(texts, expected)] + [([t], [e]) for t, e in zip(texts, expected)]:
        flat, lengths = encode(batch, max_length, side, True)
        got = np.split(flat, np.cumsum(lengths)[:-1])
        if len(got) != len(want) or any(g.tolist() != e for g, e in zip(got, want)):
            return False
    return True


# Pairs as a cross-encoder scores them, each within a tiny model's 128 tokens: case, punctuation,
# whitespace runs and an empty document.
PAIR_SAMPLE = (("what is poolq?", "Poolq runs pooling models: classify, NER, and (re)rank!"),
               ("MiXeD Case query\twith tabs", "a document,\nwith   runs of  whitespace and 'quotes' & [brackets]"),
               ("empty document", ""),
               ("x " * 20, "y " * 30))


def pairs_agree(tokenizer: Any, max_model_len: int) -> bool:
    """Whether `encode_pairs_plain` gives the transformers `tokenizer`'s ids and token types for
    PAIR_SAMPLE, as the engine's usual score path calls it."""
    firsts, seconds = [p[0] for p in PAIR_SAMPLE], [p[1] for p in PAIR_SAMPLE]
    want = tokenizer(firsts, seconds, truncation=True, max_length=max_model_len + 1, return_attention_mask=False,
                     return_token_type_ids=True)
    got = encode_pairs_plain(tokenizer.backend_tokenizer, firsts, seconds, max_model_len + 1)
    return got == [(i, t) for i, t in zip(want["input_ids"], want["token_type_ids"])]


def _ping() -> int:
    return os.getpid()


def usable_cores() -> int:
    """The cores this process may run on: a container's cpuset, not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def helper_budget() -> int:
    """Helpers one process may start: its usable cores less four for the engine's own
    threads, at most 12 (~2.9M tokens/s: about what half of MiniLM-L6's ceiling on an
    H100 takes)."""
    return min(12, max(0, usable_cores() - 4))


# The pool's queues hold named semaphores, which spawn registers with multiprocessing's resource
# tracker, a process of its own. When the engine's process is killed (SIGKILL, the OOM killer)
# the tracker removes them, as it should, and then writes a plain-text UserWarning ("There appear
# to be N leaked semaphore objects...") to the stderr it shares with the process: a line that is
# not JSON in a JSON log, with nothing for anyone to do. The tracker takes its warning filters
# from this interpreter's -W options when it starts, which is at the first pool.
_TRACKER_WARNING = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    if _TRACKER_WARNING not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_WARNING)


class TokenizerPool:
    """`processes` helpers encoding text chunks; `submit` returns a future of (flat ids, lengths)."""

    def __init__(self, tokenizer: Any, processes: int):
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        if backend is None or not hasattr(backend, "to_str"):
            raise ValueError("the tokenizer has no Rust backend to run in helper processes")
        _quiet_resource_tracker()
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


__all__ = ["TokenizerPool", "BrokenProcessPool", "encode_plain", "encode_pairs_plain", "agrees", "pairs_agree"]
