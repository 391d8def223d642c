"""The micro-batcher: one per engine (device), fed by many submitting threads.

Two threads own the hot path:
- the collator forms batches across all pending requests (length-sorted
  within a window, capped by a padded-token budget and a sequence count,
  padded to a multiple of 8) and collates them with a few tensor ops;
- the device thread runs the forward pass and hands rows back.
A bounded queue of depth 2 between them lets batch n+1 be collated (and
copied to the device from pinned memory) while batch n runs, and back-
pressures the collator so pending work piles up into fuller, better-sorted
windows when the device is the bottleneck.

Two lanes: interactive work (priority 0) and bulk work (priority > 0, e.g.
batch chunks). A window is taken from the interactive lane whenever it holds
anything, so an interactive request waits for at most the bulk batches
already collated (two), never behind the bulk backlog.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from operator import attrgetter

import torch

from .collate import collate, plan_batches

log = logging.getLogger(__name__)


class _Request:
    __slots__ = ("future", "results", "remaining")

    def __init__(self, n: int):
        self.future: Future = Future()
        self.results: list = [None] * n
        self.remaining = n


class Item:
    """One sequence of one request; `index` is its place in the request."""

    __slots__ = ("ids", "type_ids", "length", "token", "request", "index", "arrived")

    def __init__(self, ids, type_ids, token, request, index, arrived):
        self.ids = ids
        self.type_ids = type_ids
        self.length = int(ids.shape[0])
        self.token = token
        self.request = request
        self.index = index
        self.arrived = arrived


class Batcher:
    def __init__(self, runner, device: torch.device, max_batch_tokens: int, max_batch_seqs: int,
                 max_wait_ms: float, max_len: int, pad_id: int = 0, window_batches: int = 8):
        self.runner = runner
        self.device = device
        self.max_tokens = max_batch_tokens
        self.max_seqs = max_batch_seqs
        self.max_wait = max_wait_ms / 1000.0
        self.max_len = max_len
        self.pad_id = pad_id  # RoBERTa derives positions from it, so it must be the model's
        self.window_seqs = window_batches * max_batch_seqs
        self.window_tokens = window_batches * max_batch_tokens
        # [interactive, bulk]; _pending_tokens counts both.
        self._lanes: tuple[collections.deque[Item], collections.deque[Item]] = (collections.deque(), collections.deque())
        self._pending_tokens = 0
        self._cond = threading.Condition()
        self._ready: queue.Queue = queue.Queue(maxsize=2)
        # Written by the collator thread only; read for benchmarks and metrics.
        self.stats = {"batches": 0, "sequences": 0, "real_tokens": 0, "padded_tokens": 0}
        self._closed = False
        self._collator = threading.Thread(target=self._collate_loop, name="poolq-collator", daemon=True)
        self._worker = threading.Thread(target=self._device_loop, name="poolq-device", daemon=True)
        self._collator.start()
        self._worker.start()

    # -- submitters' side -------------------------------------------------
    def submit(self, sequences: list[tuple[torch.Tensor, torch.Tensor | None]], token: bool,
               priority: int = 0) -> Future:
        """Queue one request's sequences; the future yields one output per sequence, in order.

        A sequence-level output is a [C] tensor of raw logits, a token-level one [n, C].
        `priority` follows vLLM: lower runs earlier; anything above 0 is bulk.
        """
        request = _Request(len(sequences))
        now = time.monotonic()
        items = [Item(ids, types, token, request, i, now) for i, (ids, types) in enumerate(sequences)]
        with self._cond:
            if self._closed:
                raise RuntimeError("the pooling engine is closed")
            self._lanes[1 if priority > 0 else 0].extend(items)
            self._pending_tokens += sum(it.length for it in items)
            self._cond.notify()
        return request.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._collator.join()
        self._ready.put(None)
        self._worker.join()
        for lane in self._lanes:
            for item in lane:
                _fail(item.request, RuntimeError("the pooling engine is closed"))

    # -- collator thread --------------------------------------------------
    def _take_window(self) -> list[Item]:
        with self._cond:
            while not self._queued() and not self._closed:
                self._cond.wait()
            # Hold a lone small job at most max_wait, hoping for company.
            heads = [lane[0].arrived for lane in self._lanes if lane]
            deadline = min(heads) + self.max_wait if heads else 0
            while (not self._closed and self._pending_tokens < self.max_tokens
                   and self._queued() < self.max_seqs and time.monotonic() < deadline):
                self._cond.wait(deadline - time.monotonic())
            lane = self._lanes[0] if self._lanes[0] else self._lanes[1]
            window, tokens = [], 0
            while lane and len(window) < self.window_seqs and tokens < self.window_tokens:
                item = lane.popleft()
                tokens += item.length
                window.append(item)
            self._pending_tokens -= tokens
        # A request that already failed wastes no more device time.
        return [it for it in window if not it.request.future.done()]

    def _queued(self) -> int:
        return len(self._lanes[0]) + len(self._lanes[1])

    def _collate_loop(self) -> None:
        while True:
            window = self._take_window()
            if not window:
                if self._closed:
                    return
                continue
            window.sort(key=attrgetter("length"))
            for items in plan_batches(window, self.max_tokens, self.max_seqs, self.max_len):
                batch = self._to_device(items)
                self._count(items, batch)
                self._ready.put((items, batch))  # blocks while two batches wait: back-pressure

    def _count(self, items: list[Item], batch) -> None:
        if isinstance(batch, Exception):
            return
        self.stats["batches"] += 1
        self.stats["sequences"] += len(items)
        self.stats["real_tokens"] += sum(it.length for it in items)
        self.stats["padded_tokens"] += batch.input_ids.numel()

    def _to_device(self, items: list[Item]):
        try:
            return collate(items, self.device, self.max_len, self.pad_id)
        except Exception as exc:  # surfaced by the device thread, which isolates the bad item
            return exc

    # -- device thread ----------------------------------------------------
    def _device_loop(self) -> None:
        while True:
            job = self._ready.get()
            if job is None:
                return
            items, batch = job
            try:
                self._run(items, batch)
            except Exception as exc:  # a bug in delivery must not kill the thread and hang every caller
                log.exception("pooling batch delivery failed")
                for item in items:
                    _fail(item.request, exc)

    def _run(self, items: list[Item], batch) -> None:
        try:
            if isinstance(batch, Exception):
                raise batch
            with torch.inference_mode():
                seq, tok = self.runner(batch)
                seq = seq.cpu() if seq is not None else None
                tok = tok.cpu() if tok is not None else None
        except Exception as exc:
            if isinstance(exc, torch.OutOfMemoryError) and self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) == 1:
                log.warning("pooling batch failed for one sequence: %s", exc)
                _fail(items[0].request, exc)
                return
            # Split and retry: an OOM shrinks the batch, and any other error is
            # narrowed down to the request that causes it; the rest succeed.
            half = len(items) // 2
            for part in (items[:half], items[half:]):
                self._run(part, self._to_device(part))
            return
        self._deliver(items, seq, tok)

    def _deliver(self, items: list[Item], seq: torch.Tensor | None, tok: torch.Tensor | None) -> None:
        seq_items = [it for it in items if not it.token]
        tok_items = [it for it in items if it.token]
        outputs = []
        if seq_items:
            outputs.extend(zip(seq_items, seq.unbind(0)))
        if tok_items:
            outputs.extend(zip(tok_items, torch.split(tok, [it.length for it in tok_items])))
        for item, out in outputs:
            request = item.request
            request.results[item.index] = out
            request.remaining -= 1
            if request.remaining == 0:
                _settle(request.future.set_result, request.results)


def _fail(request: _Request, exc: BaseException) -> None:
    _settle(request.future.set_exception, exc)


def _settle(setter, value) -> None:
    # The submitter may cancel its future at any moment (it gave up on a
    # request whose later prompts failed validation); that is not an error.
    try:
        setter(value)
    except InvalidStateError:
        log.debug("result for a cancelled request dropped")
