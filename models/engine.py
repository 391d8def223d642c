"""PoolingEngine: the offline API (classify / encode / score), mirroring vLLM's LLM.

Thread model: any number of caller threads tokenize and validate on their own
thread, submit sequences to the engine's single batcher, and block on
futures; batches form across all callers. A large text request fans its
chunks out to tokenizer helper processes when the engine has them (on a GPU,
where one process cannot tokenize as fast as the device runs), else to a few
threads. Activation and entity aggregation run back on the caller's thread.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from . import inputs as inp
from .activations import Calibrated, activation_name_for, get_activation
from .batcher import Batcher
from .catalog import describe
from .collate import padded_len
from .entities import STRATEGIES, aggregate
from .loader import load
from .prepared import Prepared
from .scoring import build_score_prompts, pair_up
from .templates import load_template
from .tokenize_pool import (IN_PROCESS_TEXTS, BrokenProcessPool, TokenizerPool, agrees, ascii_twin,
                            encode_pairs_plain, encode_plain, helper_budget, pairs_agree, usable_cores)
from .types import ClassificationOutput, Encoded, PoolingInputError, PoolingOutput, ScoringOutput

log = logging.getLogger(__name__)

# Prompts per tokenizer call: big enough to amortize the call (and, with
# helper processes, the hand-off), small enough that the device starts on the
# first chunk early and that a few thousand prompts keep a dozen helpers busy.
CHUNK = 256


def batch_defaults(device: torch.device) -> tuple[int, int, float]:
    """(token budget, max sequences, max wait ms) per device kind."""
    if device.type == "cuda":
        return 16384, 256, 0.0  # TEI's default budget; vLLM's LLM uses 16384 on H100
    # No wait for company by default: while the device is busy the next batch
    # fills by itself (the collator is back-pressured), and an idle device
    # should start at once. Smaller batches than a GPU's: a CPU gains little
    # from a big one (no launch to amortize, more padding; tiny model, texts/s
    # at 1k / 2k / 4k tokens: 2248 / 2708 / 2927), while a newcomer waits for
    # the batches ahead of it.
    return 2048, 128, 0.0


def tokenizing_threads(device: torch.device) -> int:
    """Threads that tokenize a big request's chunks in parallel: up to four, and on a CPU one
    core fewer than the process may use, at least one. A CPU's forward runs on one core per
    batch (CpuThreads: a bigger model's on all of them) and is the pipeline's narrowest
    stage; tokenizing runs ahead of it. With as many tokenizers as cores, the forward got
    40-60% of a core while they had work (three threads on two cores), fell behind, and
    then ran alone on one core with the other idle: 5,000 texts, tiny model, 2 vCPUs,
    1.81-1.94 s with two tokenizing threads against 1.52-1.63 s with one (5 alternating
    calls)."""
    cores = usable_cores()
    return min(4, cores if device.type == "cuda" else max(1, cores - 1))


def default_tokenizer_processes(device: torch.device, serving: bool = False) -> int:
    """Helper processes for tokenizing: on a GPU, enough to feed a small encoder
    (~240k tokens/s each through the Rust tokenizer; text of words seen before,
    from the word cache, over 1M), leaving cores for the engine's own threads.

    On a CPU the forward pass needs the cores more than the tokenizer does, but one
    helper takes little of them: it tokenizes from the word cache, a fifth of the
    Rust tokenizer's CPU, without holding the GIL the device thread needs (in
    process the cache would). A service (`serving`: the worker) starts it where it
    has two cores or more: on 2 vCPUs it cut the worker's CPU for a 5,000-text job
    or a 5,000-line batch by a quarter, and their time by 3-9% in alternating runs
    (docs/benchmarks.md, system run 19). An offline
    engine does not, by default: a helper takes a second to start and, spawned,
    re-imports the caller's main script, which must then build its engine under
    `if __name__ == "__main__":`."""
    if device.type == "cuda":
        return helper_budget()
    return 1 if serving and usable_cores() >= 2 else 0


@dataclass
class _Chunk:
    """Up to CHUNK prompts, tokenized and validated, ready for the batcher."""

    ids: torch.Tensor  # all prompts' ids back to back
    type_ids: torch.Tensor | None
    lengths: list[int]
    encoded: list[Encoded] | None  # None when tokenized by a helper process (no offsets)

    @classmethod
    def of(cls, encoded: list[Encoded]) -> "_Chunk":
        ids, type_ids = inp.to_tensors(encoded)
        return cls(ids, type_ids, [len(e.input_ids) for e in encoded], encoded)


class PoolingEngine:
    def __init__(self, model: str, revision: str | None = None, dtype: Any = "auto", device: Any = None,
                 max_batch_tokens: int | None = None, max_batch_seqs: int | None = None,
                 max_wait_ms: float | None = None, allow_pickle: bool = False, trust_remote_code: bool = False,
                 task: str | None = None, pooling_type: str | None = None,
                 hf_overrides: dict[str, Any] | None = None, score_template: str | None = None,
                 logit_mean: float | None = None, logit_sigma: float | None = None,
                 max_model_len: int | None = None, tokenizer_processes: int | None = None):
        self.card = describe(str(model), revision=revision, hf_overrides=hf_overrides, task=task,
                             max_model_len=max_model_len)
        loaded = load(self.card, revision=revision, dtype=dtype, device=device, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code, pooling_type=pooling_type, hf_overrides=hf_overrides)
        self.device, self.dtype, self.pooling_type = loaded.device, loaded.dtype, loaded.pooling_type
        self.tokenizer = loaded.tokenizer
        # Big requests are tokenized a chunk per thread of `_pool` (or per helper process, which
        # turn this off for themselves), in parallel. The Rust tokenizer's own thread pool inside
        # each call only adds threads that spin waiting for work: on 2 vCPUs 8 texts took 144 us
        # of CPU each with it and 94 without, and the worker's CPU for a 5,000-line batch fell 5%
        # (docs/benchmarks.md, system run 15). Read by the library at each call; a value the
        # operator set wins.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.max_model_len = self.card.max_model_len
        self.supported_tasks = tuple(t for t, ok in (("classify", loaded.supports_seq),
                                                     ("token_classify", loaded.supports_token)) if ok)
        self._tokenizers = inp.ThreadTokenizers(loaded.tokenizer)
        self._activation = Calibrated(get_activation(activation_name_for(self.card.config)),
                                      logit_mean, logit_sigma)
        self._template = load_template(score_template)
        self._vocab_size = int(self.card.config.get("vocab_size") or len(self.tokenizer))
        pad_id = self.card.config.get("pad_token_id")
        pad_id = pad_id if pad_id is not None else (self.tokenizer.pad_token_id or 0)
        tokens, seqs, wait = batch_defaults(self.device)
        self._batcher = Batcher(
            loaded.runner, self.device,
            # One sequence of max_model_len must always fit in a batch.
            max_batch_tokens=max(max_batch_tokens or tokens, padded_len(self.max_model_len, self.max_model_len)),
            max_batch_seqs=max_batch_seqs or seqs,
            max_wait_ms=wait if max_wait_ms is None else max_wait_ms,
            max_len=self.max_model_len, pad_id=int(pad_id))
        self._pool_threads = tokenizing_threads(self.device)
        self._pool = ThreadPoolExecutor(max_workers=self._pool_threads, thread_name_prefix="poolq-tokenize")
        self._plain_in_process = self._plain_agrees()
        self._pairs_in_process = self._pairs_agree()
        self.warm_tokenizers(self._pool_threads)
        self._process_pool = self._start_process_pool(
            default_tokenizer_processes(self.device) if tokenizer_processes is None else tokenizer_processes)

    # -- public API --------------------------------------------------------
    # `priority` (all three methods) follows vLLM: lower runs earlier; above 0
    # is bulk work, which the batcher serves only when no interactive work waits.
    def classify(self, prompts, use_activation=None, truncate_prompt_tokens=None, truncation_side=None,
                 add_special_tokens=True, priority=0) -> list[ClassificationOutput]:
        self._require_task("classify")
        lengths, encoded, logits = self._run_prompts(prompts, False, truncate_prompt_tokens, truncation_side,
                                                     add_special_tokens, priority=priority)
        return self._classified(use_activation)(lengths, encoded, logits)

    def encode(self, prompts, pooling_task="classify", use_activation=None, truncate_prompt_tokens=None,
               truncation_side=None, add_special_tokens=True, aggregation=None, priority=0) -> list[PoolingOutput]:
        self._check_encode(pooling_task, aggregation)
        if pooling_task == "classify":
            return self._as_pooling(self.classify(prompts, use_activation, truncate_prompt_tokens, truncation_side,
                                                  add_special_tokens, priority))
        lengths, encoded, logits = self._run_prompts(prompts, True, truncate_prompt_tokens, truncation_side,
                                                     add_special_tokens, with_offsets=aggregation is not None,
                                                     priority=priority)
        return self._token_classified(use_activation, aggregation)(lengths, encoded, logits)

    def score(self, data_1, data_2, use_activation=None, max_tokens_per_query=0, max_tokens_per_doc=0,
              chat_template_kwargs=None, truncate_prompt_tokens=None, priority=0) -> list[ScoringOutput]:
        prepared = self.prepare_score(data_1, data_2, use_activation, max_tokens_per_query, max_tokens_per_doc,
                                      chat_template_kwargs, truncate_prompt_tokens)
        return prepared.finish([self._batcher.submit(*prepared.slice_args(0, len(prepared), priority)).result()])

    # -- scheduling API: prepare now, run in slices later --------------------
    # For a caller that orders the work of many requests itself (the worker's
    # scheduler): the same validation, errors and outputs as the methods
    # above, split into tokenizing (prepare_*), running slices (submit) and
    # shaping the outputs (Prepared.finish).
    def prepare_classify(self, prompts, use_activation=None, truncate_prompt_tokens=None, truncation_side=None,
                         add_special_tokens=True) -> Prepared:
        self._require_task("classify")
        return self._prepare(prompts, False, truncate_prompt_tokens, truncation_side, add_special_tokens, False,
                             self._classified(use_activation))

    def prepare_encode(self, prompts, pooling_task="classify", use_activation=None, truncate_prompt_tokens=None,
                       truncation_side=None, add_special_tokens=True, aggregation=None) -> Prepared:
        self._check_encode(pooling_task, aggregation)
        if pooling_task == "classify":
            classified = self._classified(use_activation)
            return self._prepare(prompts, False, truncate_prompt_tokens, truncation_side, add_special_tokens, False,
                                 lambda *raw: self._as_pooling(classified(*raw)))
        return self._prepare(prompts, True, truncate_prompt_tokens, truncation_side, add_special_tokens,
                             aggregation is not None, self._token_classified(use_activation, aggregation))

    def stream_classify(self, prompts, use_activation=None, truncate_prompt_tokens=None, truncation_side=None,
                        add_special_tokens=True) -> Iterator[Prepared]:
        """`prepare_classify` a chunk of prompts at a time, in order, each ready as soon as it is
        tokenized: a scheduler runs the first chunks of a big request while the rest tokenize, as
        `classify` does. A bad prompt raises when its chunk is reached."""
        self._require_task("classify")
        return self._prepare_stream(prompts, False, truncate_prompt_tokens, truncation_side, add_special_tokens,
                                    self._classified(use_activation))

    def stream_encode(self, prompts, pooling_task="classify", use_activation=None, truncate_prompt_tokens=None,
                      truncation_side=None, add_special_tokens=True) -> Iterator[Prepared]:
        """`prepare_encode` as `stream_classify` (no entity aggregation: it needs every offset)."""
        self._check_encode(pooling_task, None)
        if pooling_task == "classify":
            classified = self._classified(use_activation)
            return self._prepare_stream(prompts, False, truncate_prompt_tokens, truncation_side,
                                        add_special_tokens, lambda *raw: self._as_pooling(classified(*raw)))
        return self._prepare_stream(prompts, True, truncate_prompt_tokens, truncation_side, add_special_tokens,
                                    self._token_classified(use_activation, None))

    def prepare_score(self, data_1, data_2, use_activation=None, max_tokens_per_query=0, max_tokens_per_doc=0,
                      chat_template_kwargs=None, truncate_prompt_tokens=None) -> Prepared:
        if not self.card.supports_score:
            if self.card.task == "classify":
                raise PoolingInputError("Scoring API is only enabled for num_labels == 1.")
            raise PoolingInputError("This model does not support the Scoring API.")
        limit = inp.resolve_truncation(truncate_prompt_tokens, self.max_model_len)
        tok = self._tokenizers.get()
        if self._pairs_in_process and not max_tokens_per_query and not max_tokens_per_doc:
            encoded = self._plain_pairs(tok, data_1, data_2, limit)
        else:
            encoded = build_score_prompts(
                tok, data_1, data_2, template=self._template, use_sep_token=self._use_sep_token,
                max_tokens_per_query=max_tokens_per_query, max_tokens_per_doc=max_tokens_per_doc,
                chat_template_kwargs=chat_template_kwargs, limit=limit, max_model_len=self.max_model_len)
        for e in encoded:
            inp.check_length(len(e.input_ids), self.max_model_len)
        chunk = _Chunk.of(encoded)

        def scored(lengths, _encoded, logits):
            scores = self._activation(logits, use_activation)[:, 0].tolist()
            return list(map(ScoringOutput, scores, lengths))

        return Prepared(chunk.ids, chunk.type_ids, chunk.lengths, False, encoded, scored)

    def submit(self, slices: list[tuple[Prepared, int, int, int]]) -> list[Future]:
        """Queue slices (prepared, begin, end, priority) together; each future yields that
        slice's raw outputs, which `Prepared.finish` takes back in order."""
        return self._batcher.submit_many([prepared.slice_args(begin, end, priority)
                                          for prepared, begin, end, priority in slices])

    # -- output shaping, shared by both APIs --------------------------------
    def _classified(self, use_activation):
        def finish(lengths, _encoded, logits) -> list[ClassificationOutput]:
            probs = self._activation(logits, use_activation)
            labels = probs.argmax(dim=-1).tolist()
            # numpy's tolist is several times faster than torch's, and at tens of
            # thousands of prompts a second these per-prompt steps add up.
            names = list(map(self.card.id2label.get, labels))
            return list(map(ClassificationOutput, probs.numpy().tolist(), names, lengths))

        return finish

    @staticmethod
    def _as_pooling(outputs: list[ClassificationOutput]) -> list[PoolingOutput]:
        return [PoolingOutput(data=o.probs, num_prompt_tokens=o.num_prompt_tokens) for o in outputs]

    def _check_encode(self, pooling_task, aggregation) -> None:
        if pooling_task not in ("classify", "token_classify"):
            raise PoolingInputError(f"Unsupported task: {pooling_task!r} Supported tasks: "
                                    f"{self.supported_tasks}", "task")
        self._require_task(pooling_task)
        if pooling_task == "classify" and aggregation is not None:
            raise PoolingInputError("aggregation applies to token_classify only", "aggregation")
        if aggregation is not None and aggregation not in STRATEGIES:
            raise PoolingInputError(f"aggregation must be one of {STRATEGIES}", "aggregation")

    def _token_classified(self, use_activation, aggregation):
        def finish(lengths, encoded, logits) -> list[PoolingOutput]:
            flat = torch.cat(logits)
            data = self._activation(flat, use_activation).split(lengths)
            scores = torch.softmax(self._activation.calibrate(flat), -1).split(lengths) if aggregation else None
            outs = []
            for i, (n, d) in enumerate(zip(lengths, data)):
                entities = None
                if aggregation is not None:
                    e = encoded[i]  # with_offsets keeps tokenization in process, so encoded is complete
                    entities = aggregate(aggregation, scores[i].numpy(), e.input_ids, e.offsets, e.special_mask,
                                         e.text, self.tokenizer, self.card.id2label)
                outs.append(PoolingOutput(data=d.numpy().tolist(), num_prompt_tokens=n, entities=entities))
            return outs

        return finish

    @property
    def max_batch_tokens(self) -> int:
        """The batcher's padded-token budget per batch."""
        return self._batcher.max_tokens

    @property
    def max_batch_seqs(self) -> int:
        return self._batcher.max_seqs

    @property
    def tokenizing_threads(self) -> int:
        """How many threads tokenize for this engine at once (`tokenizing_threads`)."""
        return self._pool_threads

    @property
    def window_batches(self) -> int:
        """Batches' worth of bulk work the batcher sorts by length at a time."""
        return self._batcher.window_batches

    def batch_stats(self) -> dict[str, int]:
        """Counters since start: batches, sequences, real and padded tokens."""
        return dict(self._batcher.stats)

    @property
    def tokenizer_processes(self) -> int:
        """Helper processes tokenizing large text requests (0: all in process)."""
        pool = self._process_pool
        return pool.processes if pool is not None and not pool.broken else 0

    def close(self) -> None:
        self._batcher.close()
        self._pool.shutdown(wait=False)
        if self._process_pool is not None:
            self._process_pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ---------------------------------------------------------
    @property
    def _use_sep_token(self) -> bool:
        # Converted LLM rerankers concatenate query and document (vLLM defaults
        # use_sep_token to False for them); encoders use the tokenizer's pair
        # encoding. An explicit use_sep_token (config or hf_overrides) wins.
        return bool(self.card.config.get("use_sep_token", not self.card.is_converted))

    def _require_task(self, task: str) -> None:
        if task == self.card.task and task in self.supported_tasks:
            return
        if task not in self.supported_tasks:
            raise PoolingInputError(f"Unsupported task: {task!r} Supported tasks: {self.supported_tasks}", "task")
        raise PoolingInputError(f"Try switching the model's pooling_task via --pooler-config.task {task}.", "task")

    def _start_process_pool(self, processes: int) -> TokenizerPool | None:
        if processes <= 0:
            return None
        try:
            pool = TokenizerPool(self.tokenizer, processes)
        except (ValueError, OSError, RuntimeError) as exc:
            # RuntimeError covers BrokenProcessPool: helpers re-import the main
            # script (multiprocessing's spawn), and one that builds an engine at
            # import time, outside `if __name__ == "__main__":`, kills them.
            log.warning("tokenizing in process: tokenizer helpers did not start (%s); if the engine is built "
                        "by a script, build it under `if __name__ == \"__main__\":`", exc)
            return None
        side = self._tokenizers.default_side
        if not pool.matches(self._tokenizers.get(side), self.max_model_len + 1, side):
            log.warning("tokenizing in process: helper processes disagree with the transformers tokenizer")
            pool.close()
            return None
        log.info("tokenizing large text requests in %d helper processes", processes)
        return pool

    def _run_prompts(self, prompts, token, truncate_prompt_tokens, truncation_side, add_special_tokens,
                     with_offsets=False, priority=0) -> tuple[list[int], list[Encoded], Any]:
        """Per prompt: its token count and its encoding (complete only with offsets); and
        the raw outputs: a [n, C] tensor, or (token) a list of [len_i, C] tensors."""
        items = inp.normalize_prompts(prompts)
        args = self._tokenize_args(truncate_prompt_tokens, truncation_side, add_special_tokens, with_offsets)
        futures, lengths, encoded = self._submit(self._tokenized_chunks(items, args), token, priority)
        return lengths, encoded, self._gather(futures, token)

    def _prepare(self, prompts, token, truncate_prompt_tokens, truncation_side, add_special_tokens, with_offsets,
                 finish) -> Prepared:
        items = inp.normalize_prompts(prompts)
        args = self._tokenize_args(truncate_prompt_tokens, truncation_side, add_special_tokens, with_offsets)
        chunks = list(self._tokenized_chunks(items, args))
        if len(chunks) == 1:
            chunk = chunks[0]
            return Prepared(chunk.ids, chunk.type_ids, chunk.lengths, token, chunk.encoded or [], finish)
        ids = torch.cat([c.ids for c in chunks])
        type_ids = (None if all(c.type_ids is None for c in chunks) else
                    torch.cat([c.type_ids if c.type_ids is not None else torch.zeros_like(c.ids) for c in chunks]))
        encoded = [e for c in chunks for e in (c.encoded or [])] if with_offsets else []
        return Prepared(ids, type_ids, [n for c in chunks for n in c.lengths], token, encoded, finish)

    def _prepare_stream(self, prompts, token, truncate_prompt_tokens, truncation_side, add_special_tokens,
                        finish) -> Iterator[Prepared]:
        # Checked now, not at the first next(): a bad argument is the caller's error at once.
        items = inp.normalize_prompts(prompts)
        args = self._tokenize_args(truncate_prompt_tokens, truncation_side, add_special_tokens, False)
        return (Prepared(c.ids, c.type_ids, c.lengths, token, [], finish)
                for c in self._tokenized_chunks(items, args))

    def _tokenize_args(self, truncate_prompt_tokens, truncation_side, add_special_tokens, with_offsets) -> tuple:
        limit = inp.resolve_truncation(truncate_prompt_tokens, self.max_model_len)
        if truncation_side not in (None, "left", "right"):
            raise PoolingInputError("truncation_side must be 'left' or 'right'", "truncation_side")
        return limit, truncation_side, add_special_tokens, with_offsets

    def _tokenized_chunks(self, items: list, args: tuple) -> Iterator[_Chunk]:
        chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
        if len(chunks) == 1 and (len(chunks[0]) <= IN_PROCESS_TEXTS or not self._helper_takes(chunks[0], args)):
            # A few prompts: here, where the word cache takes them (a helper's round trip costs
            # more). More (a batch's piece of lines, a job of a few hundred texts) go to a
            # helper where there is one, which tokenizes them from the cache off this
            # process's GIL.
            yield self._encode_chunk(chunks[0], *args)
            return
        # Tokenize chunks in parallel and hand each on as soon as it is ready, in
        # order, so the device starts on the first one early. Only a few ahead of
        # the one handed on: the tokenizers are shared and first come first served,
        # so a 20k-text request that queued all its chunks at once would have every
        # request after it wait for all of them; and a stream its caller stops
        # reading (a cancelled job) leaves little tokenized for nothing.
        upcoming = iter(chunks)
        pending = collections.deque((c, self._start_chunk(c, args))
                                    for c in itertools.islice(upcoming, self._tokenize_ahead()))
        while pending:
            chunk, future = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, self._start_chunk(following, args)))
            yield self._finish_chunk(chunk, future, args)

    def _tokenize_ahead(self) -> int:
        """Chunks a request keeps being tokenized at once: two per tokenizer, so each has its
        next chunk queued when it finishes one."""
        pool = self._process_pool
        workers = pool.processes if pool is not None and not pool.broken else self._pool_threads
        return 2 * max(1, workers)

    def _helper_takes(self, prompts: list, args: tuple) -> bool:
        """Whether a helper process can tokenize these prompts: text only, no offsets."""
        *_, with_offsets = args
        pool = self._process_pool
        return pool is not None and not pool.broken and not with_offsets and all(isinstance(p, str) for p in prompts)

    def _start_chunk(self, prompts: list, args: tuple) -> Future:
        limit, side, add_special_tokens, _ = args
        if self._helper_takes(prompts, args):
            try:
                return self._process_pool.submit(prompts, limit if limit is not None else self.max_model_len + 1,
                                                  side or self._tokenizers.default_side, add_special_tokens)
            except (BrokenProcessPool, RuntimeError):
                self._pool_failed()
        return self._pool.submit(self._encode_chunk, prompts, *args)

    def _finish_chunk(self, prompts: list, future: Future, args: tuple) -> _Chunk:
        try:
            result = future.result()
        except BrokenProcessPool:
            self._pool_failed()
            return self._encode_chunk(prompts, *args)
        if isinstance(result, _Chunk):
            return result
        return self._plain_chunk(*result)

    def _plain_chunk(self, flat: np.ndarray, lengths: np.ndarray) -> _Chunk:
        """Text prompts encoded without transformers' wrapper (flat ids, lengths), validated."""
        bad = (lengths == 0) | (lengths > self.max_model_len)
        if bad.any():
            inp.check_length(int(lengths[bad.argmax()]), self.max_model_len)
        return _Chunk(torch.from_numpy(flat).long(), None, lengths.tolist(), None)

    def _plain_pairs(self, tok: Any, data_1, data_2, limit: int | None) -> list[Encoded]:
        """A cross-encoder's text pairs through the word cache (on the bench's texts ~40 us a pair
        where the transformers call takes ~400); the pairs it cannot answer (to truncate, or
        not ASCII) go through the transformers call as before."""
        queries, docs = pair_up(data_1, data_2)
        plain = encode_pairs_plain(tok.backend_tokenizer, queries, docs,
                                   limit if limit is not None else self.max_model_len + 1)
        usual = [i for i, pair in enumerate(plain) if pair is None]
        by_tokenizer = iter(inp.tokenize(tok, [queries[i] for i in usual], [docs[i] for i in usual], limit=limit,
                                         max_model_len=self.max_model_len) if usual else ())
        return [Encoded(input_ids=pair[0], token_type_ids=pair[1]) if pair is not None else next(by_tokenizer)
                for pair in plain]

    def _pool_failed(self) -> None:
        pool = self._process_pool
        if pool is not None and not pool.broken:
            pool.broken = True
            log.error("a tokenizer helper process died; tokenizing in process from now on")

    def _plain_agrees(self) -> bool:
        """Whether text prompts may skip transformers' Python around the Rust tokenizer (about
        150 us a call, as much as encoding a short text): only where both give the same ids."""
        side = self._tokenizers.default_side
        try:
            return agrees(self._tokenizers.get(side), lambda texts, limit, s, special: encode_plain(
                self._tokenizers.get(s).backend_tokenizer, texts, limit, s, special), self.max_model_len + 1, side)
        except (AttributeError, TypeError, ValueError):  # no Rust backend, or not one we can drive
            return False

    def _pairs_agree(self) -> bool:
        """Whether a cross-encoder's text pairs may skip transformers as text prompts do: only where
        the word cache's pair path gives the transformers call's ids and token types."""
        if not (self._plain_in_process and self.card.supports_score and self._template is None
                and self._use_sep_token):
            return False
        try:
            return pairs_agree(self._tokenizers.get(), self.max_model_len)
        except (AttributeError, TypeError, ValueError):  # a tokenizer that cannot encode such pairs
            return False

    def warm_tokenizers(self, threads: int) -> None:
        """Make, in the background, the tokenizer copies (each with its ASCII twin) that `threads`
        more threads will take on their first call: each thread tokenizes with a copy of its own,
        and a copy made on first use cost a busy worker's first batch chunk ~0.1 s. The engine
        asks for its tokenizing pool; a caller with threads of its own asks for those."""
        threading.Thread(target=self._tokenizers.make_spares, name="poolq-tokenizer-spares", daemon=True,
                         args=(threads, self._warm_tokenizer)).start()

    def _warm_tokenizer(self, tok: Any) -> None:
        if self._plain_in_process:
            ascii_twin(tok.backend_tokenizer)

    def _encode_chunk(self, prompts, limit, side, add_special_tokens, with_offsets) -> _Chunk:
        tok = self._tokenizers.get(side)
        if self._plain_in_process and not with_offsets and all(isinstance(p, str) for p in prompts):
            # The thread's own tokenizer copy, so its truncation setting is this call's alone.
            return self._plain_chunk(*encode_plain(tok.backend_tokenizer, prompts,
                                                   limit if limit is not None else self.max_model_len + 1,
                                                   side or self._tokenizers.default_side, add_special_tokens))
        texts = [p for p in prompts if isinstance(p, str)]
        by_text = iter(inp.tokenize(tok, texts, limit=limit, max_model_len=self.max_model_len,
                                    add_special_tokens=add_special_tokens, with_offsets=with_offsets)
                       if texts else [])
        out = []
        for p in prompts:
            if isinstance(p, str):
                e = next(by_text)
            else:
                inp.check_vocab(p, self._vocab_size)
                ids = inp.truncate_ids(p, limit, side or self._tokenizers.default_side)
                mask = tok.get_special_tokens_mask(ids, already_has_special_tokens=True) if with_offsets else None
                e = Encoded(input_ids=ids, special_mask=mask)
            inp.check_length(len(e.input_ids), self.max_model_len)
            out.append(e)
        return _Chunk.of(out)

    def _submit(self, chunks, token, priority=0) -> tuple[list[Future], list[int], list[Encoded]]:
        futures, lengths, encoded = [], [], []
        try:
            for chunk in chunks:
                lengths.extend(chunk.lengths)
                if chunk.encoded is not None:
                    encoded.extend(chunk.encoded)
                futures.append(self._batcher.submit(chunk.ids, chunk.lengths, token, chunk.type_ids, priority))
        except BaseException:
            # A later chunk failed validation: drop the work already queued.
            for f in futures:
                f.cancel()
            raise
        return futures, lengths, encoded

    @staticmethod
    def _gather(futures: list[Future], token: bool):
        results = [f.result() for f in futures]
        if token:
            return [out for chunk in results for out in chunk]
        return results[0] if len(results) == 1 else torch.cat(results)
