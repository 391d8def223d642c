"""The micro-batcher: one per engine (device), fed by many submitting threads.

Sequences live in per-request flat id tensors with numpy arrays of lengths
and starts; nothing on the hot path is a Python object per sequence, so one
process keeps up with a GPU running a small encoder at tens of thousands of
sequences per second.

Three threads own the hot path:
- the collator forms batches across all pending requests (length-sorted
  within a window, capped by a padded-token budget and a sequence count,
  padded to a multiple of 8) and collates them with a few tensor ops;
- the device thread launches the forward pass and an asynchronous copy of
  its outputs to pinned host memory, then goes straight on to the next
  batch, so the GPU never idles while Python launches kernels or hands
  results back (on a small encoder a batch runs in a few milliseconds,
  about what launching it costs);
- the delivery thread waits for each batch's copy and hands rows back. On a
  CPU there is no copy to wait for, and no delivery thread: the device
  thread hands each batch's rows back itself, where a hand-off per batch to
  another thread (its wake-up, the GIL changing hands twice) cost more CPU
  than the delivery (a 5,000-line batch: 0.13 s of the delivery thread's
  CPU; the device thread's own was the same with or without it).
Bounded queues between them (two collated batches, one launched batch
waiting for delivery) let batch n+1 be collated and copied to the device
while batch n runs, keep at most three batches queued on the device, and
back-pressure the collator so pending work piles up into fuller,
better-sorted windows when the device is the bottleneck.

Two lanes: interactive work (priority 0) and bulk work (priority > 0, e.g.
batch chunks), in the pending work and again among the collated batches. A
window is taken from the interactive lane whenever it holds anything, and
an interactive batch goes to the device before bulk batches collated ahead
of it, so an interactive request waits for the batch the device is running
(and, on a GPU, the one launched behind it), never behind the bulk backlog.
On a CPU the interactive lane has a device thread of its own, and does not
wait for the running bulk batch either (`_interactive_loop`).
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .collate import collate, move, plan_batches
from .runner import DeviceBatch

log = logging.getLogger(__name__)


# Collated batches that may wait for the device, per lane (see Batcher._ready_room).
READY_DEPTH = 2


class _Request:
    """One submitter's sequences, kept flat, and the outputs gathered for it."""

    __slots__ = ("future", "ids", "type_ids", "lengths", "starts", "token", "arrived", "remaining",
                 "seq_out", "seq_dtype", "tok_out")

    def __init__(self, ids: torch.Tensor, type_ids: torch.Tensor | None, lengths: np.ndarray, token: bool):
        self.future: Future = Future()
        self.ids = ids
        self.type_ids = type_ids
        self.lengths = lengths
        self.starts = np.concatenate(([0], np.cumsum(lengths)))  # one past the end for the last
        self.token = token
        self.arrived = time.monotonic()
        self.remaining = len(lengths)
        # [n, C], filled by row index: numpy, whose indexing runs without releasing the GIL
        # (see Batcher._deliver); a tensor of `seq_dtype` once complete.
        self.seq_out: np.ndarray | None = None
        self.seq_dtype: torch.dtype | None = None
        self.tok_out: list | None = [None] * len(lengths) if token else None

    def tokens(self, begin: int, end: int) -> int:
        return int(self.starts[end] - self.starts[begin])

    def deliver_rows(self, index: np.ndarray, rows: np.ndarray, dtype: torch.dtype) -> None:
        if self.seq_out is None:
            self.seq_out = np.empty((len(self.lengths), rows.shape[1]), dtype=rows.dtype)
            self.seq_dtype = dtype
        self.seq_out[index] = rows
        self._count(len(index))

    def deliver_tokens(self, index: np.ndarray, outputs: Sequence[torch.Tensor]) -> None:
        for i, out in zip(index.tolist(), outputs):
            self.tok_out[i] = out
        self._count(len(index))

    def _count(self, n: int) -> None:
        self.remaining -= n
        if self.remaining == 0:
            _settle(self.future.set_result, self.tok_out if self.token else _from_numpy(self.seq_out, self.seq_dtype))


@dataclass
class _Window:
    """Sequences taken from the lanes together, as flat arrays (one entry per sequence).

    `ids`/`type_ids` hold the taken sequences back to back plus one trailing
    pad element, which collation gathers for padded positions.
    """

    requests: list[_Request]
    ids: torch.Tensor
    type_ids: torch.Tensor | None
    starts: np.ndarray     # into ids
    lengths: np.ndarray
    owner: np.ndarray      # index into requests
    index: np.ndarray      # the sequence's place in its request
    token: np.ndarray      # bool: return every token's output


class Batcher:
    def __init__(self, runner, device: torch.device, max_batch_tokens: int, max_batch_seqs: int,
                 max_wait_ms: float, max_len: int, pad_id: int = 0, window_batches: int = 8,
                 interactive_thread: bool | None = None):
        self.runner = runner
        self.device = device
        self.max_wait = max_wait_ms / 1000.0
        self.max_len = max_len
        self.pad_id = pad_id  # RoBERTa derives positions from it, so it must be the model's
        self.window_batches = window_batches
        self.set_limits(max_batch_tokens, max_batch_seqs)
        # [interactive, bulk] lanes of (request, begin, end) segments; the
        # pending counters cover both.
        self._lanes: tuple[collections.deque, collections.deque] = (collections.deque(), collections.deque())
        self._pending_tokens = 0
        self._pending_seqs = 0
        self._outstanding = 0  # requests submitted whose future has not settled
        # One lock for the lanes and for the collated batches waiting for the device
        # ([interactive, bulk], READY_DEPTH each): the collator waits on both at once.
        # Each kind of waiter has a condition of its own over that lock, told only of what
        # it waits for: `_cond` the collator (work submitted, room for a collated batch),
        # `_device_ready` the device thread (a collated batch), `_interactive_ready` a CPU's
        # interactive device thread (an interactive one). On one shared condition every
        # submission and every batch woke all three, each taking the GIL to find nothing.
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._device_ready = threading.Condition(lock)
        self._interactive_ready = threading.Condition(lock)
        self._ready: tuple[collections.deque, collections.deque] = (collections.deque(), collections.deque())
        self._ready_closed = False
        self._launched: queue.Queue = queue.Queue(maxsize=1)
        # Written by the collator thread only; read for benchmarks and metrics.
        self.stats = {"batches": 0, "sequences": 0, "real_tokens": 0, "padded_tokens": 0}
        self._closed = False
        self._collator = threading.Thread(target=_os_named(self._collate_loop), name="poolq-collator", daemon=True)
        self._worker = threading.Thread(target=_os_named(self._device_loop), name="poolq-device", daemon=True)
        # On a CPU the interactive lane has a device thread of its own (see _interactive_loop),
        # and each device thread hands its rows back itself: only a GPU's copies are waited for
        # on a delivery thread.
        if interactive_thread is None:
            interactive_thread = device.type == "cpu"
        self._interactive = (threading.Thread(target=_os_named(self._interactive_loop),
                                              name="poolq-device-interactive", daemon=True)
                             if interactive_thread else None)
        self._deliverer = (threading.Thread(target=_os_named(self._delivery_loop), name="poolq-deliver", daemon=True)
                           if device.type != "cpu" else None)
        self._collator.start()
        self._worker.start()
        for thread in (self._deliverer, self._interactive):
            if thread is not None:
                thread.start()

    def set_limits(self, max_batch_tokens: int, max_batch_seqs: int) -> None:
        """Batch limits, and the window of `window_batches` batches they imply.
        The collator reads them per window, so a change applies to the next one."""
        self.max_tokens, self.max_seqs = max_batch_tokens, max_batch_seqs
        self.window_tokens = self.window_batches * max_batch_tokens
        self.window_seqs = self.window_batches * max_batch_seqs

    # -- submitters' side -------------------------------------------------
    def submit(self, ids: torch.Tensor, lengths: Sequence[int], token: bool, type_ids: torch.Tensor | None = None,
               priority: int = 0) -> Future:
        """Queue one request: `ids` holds its sequences back to back (int64), `lengths` their sizes.

        The future yields the raw logits in the request's order: a [n, C]
        tensor for sequence-level outputs, or (token=True) a list of n [len_i, C]
        tensors. `priority` follows vLLM: lower runs earlier; above 0 is bulk.
        """
        return self.submit_many([(ids, lengths, token, type_ids, priority)])[0]

    def submit_many(self, requests: Sequence[tuple]) -> list[Future]:
        """Queue several requests (`submit`'s arguments as tuples) at once: one lock and one
        wake-up, so the collator sees them all together and batches them as one window."""
        made = []
        for ids, lengths, token, type_ids, priority in requests:
            lengths = np.asarray(lengths, dtype=np.int64)
            if not len(lengths) or lengths.min() < 1 or int(lengths.sum()) != ids.shape[0]:
                raise ValueError("lengths must be positive and add up to the number of ids")
            made.append((_Request(ids, type_ids, lengths, token), priority))
        with self._cond:
            if self._closed:
                raise RuntimeError("the pooling engine is closed")
            self._outstanding += len(made)
            for request, _ in made:
                request.future.add_done_callback(self._settled)
            # Nothing else in the engine, and interactive work that fits one batch (one
            # request, or the group a scheduler submits together): run it here and now.
            # Handing it to the collator, device and delivery threads costs three thread
            # wake-ups, which on a small model is more than the forward itself; with
            # company in the engine, the threads batch as usual.
            inline = (self._outstanding == len(made) and not self._pending_seqs
                      and all(priority <= 0 for _, priority in made)
                      and sum(len(r.lengths) for r, _ in made) <= self.max_seqs
                      and sum(r.ids.shape[0] for r, _ in made) <= self.max_tokens)
            if not inline:
                for request, priority in made:
                    self._lanes[1 if priority > 0 else 0].append((request, 0, len(request.lengths)))
                    self._pending_tokens += request.ids.shape[0]
                    self._pending_seqs += len(request.lengths)
                # The collator; the device thread waits on this lock too. Not for an inline run,
                # which leaves them nothing to do: each wake-up is a thread switch and a turn
                # for the GIL, about a tenth of a one-text call on a small model.
                self._cond.notify_all()
        if inline:
            self._run_inline([request for request, _ in made])
        return [request.future for request, _ in made]

    def _settled(self, _future) -> None:
        with self._cond:
            self._outstanding -= 1

    def _run_inline(self, requests: list[_Request]) -> None:
        """These requests' batches on the caller's thread, start to finish."""
        if len(requests) == 1 and self._run_alone(requests[0]):
            return
        window = self._window([(request, 0, len(request.lengths)) for request in requests])
        order = np.argsort(window.lengths, kind="stable")
        for begin, end in plan_batches(window.lengths[order], self.max_tokens, self.max_seqs, self.max_len):
            rows = order[begin:end]
            batch = self._to_device(window, rows)
            self._count(window, rows, batch)
            try:
                if isinstance(batch, Exception):
                    raise batch
                with torch.inference_mode():
                    seq, tok = self.runner(batch)
                    seq = None if seq is None else seq.cpu()
                    tok = None if tok is None else tok.cpu()
                self._deliver(window, rows, seq, tok)
            except Exception as exc:  # noqa: BLE001 - the requests' own failure, as on the device thread
                log.warning("pooling batch failed: %s", exc)
                _fail_owners(window, rows, exc)

    def _run_alone(self, request: _Request) -> bool:
        """A lone request whose rows share one length (one text, above all) and fit one batch:
        its flat ids already are the batch, unpadded, so it skips the window, the plan, the
        gather and the per-owner delivery (a quarter of a millisecond of a one-text call on a
        small model). The outputs are those `_run_inline` would give. False: not such a request."""
        lengths = request.lengths
        n, width = len(lengths), int(lengths[0])
        if n > self.max_seqs or n * width > self.max_tokens or (n > 1 and bool((lengths != width).any())):
            return False
        rows = move(torch.arange(n), self.device)
        try:
            batch = DeviceBatch(
                input_ids=move(request.ids.reshape(n, width), self.device),
                attention_mask=move(torch.ones((n, width), dtype=torch.long), self.device),
                token_type_ids=(None if request.type_ids is None
                                else move(request.type_ids.reshape(n, width), self.device)),
                lengths=move(torch.from_numpy(lengths), self.device),
                seq_rows=None if request.token else rows, token_rows=rows if request.token else None,
                padded=False)
            self._add_stats(n, n * width, n * width)
            with torch.inference_mode():
                seq, tok = self.runner(batch)
                out = list(torch.split(tok.cpu(), width)) if request.token else seq.cpu()
        except Exception as exc:  # noqa: BLE001 - the request's own failure, as on the device thread
            log.warning("pooling batch failed: %s", exc)
            _fail(request, exc)
            return True
        _settle(request.future.set_result, out)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._collator.join()
        with self._cond:
            self._ready_closed = True  # the device thread runs what waits, then stops
            self._device_ready.notify_all()
            self._interactive_ready.notify_all()
        self._worker.join()
        for thread in (self._interactive, self._deliverer):
            if thread is not None:
                thread.join()
        for lane in self._lanes:
            for request, _, _ in lane:
                _fail(request, RuntimeError("the pooling engine is closed"))

    # -- collator thread --------------------------------------------------
    def _take_segments(self) -> tuple[list[tuple[_Request, int, int]], bool]:
        """The next window, interactive work first; and whether it is bulk work."""
        with self._cond:
            while not self._pending_seqs and not self._closed:
                self._cond.wait()
            # Hold a lone small job at most max_wait, hoping for company.
            heads = [lane[0][0].arrived for lane in self._lanes if lane]
            deadline = min(heads) + self.max_wait if heads else 0
            while (not self._closed and self._pending_tokens < self.max_tokens
                   and self._pending_seqs < self.max_seqs and time.monotonic() < deadline):
                self._cond.wait(deadline - time.monotonic())
            bulk = not self._lanes[0]
            lane = self._lanes[1] if bulk else self._lanes[0]
            taken, seqs, tokens = [], 0, 0
            while lane and seqs < self.window_seqs and tokens < self.window_tokens:
                request, begin, end = lane.popleft()
                # Take as much of the segment as the window has room for.
                stop = min(end, begin + self.window_seqs - seqs)
                room = request.starts[begin] + self.window_tokens - tokens
                stop = max(begin + 1, min(stop, int(np.searchsorted(request.starts, room, side="right")) - 1))
                if stop < end:
                    lane.appendleft((request, stop, end))
                taken.append((request, begin, stop))
                seqs += stop - begin
                tokens += request.tokens(begin, stop)
            self._pending_seqs -= seqs
            self._pending_tokens -= tokens
        # A request that already failed or was cancelled wastes no more device time.
        return [seg for seg in taken if not seg[0].future.done()], bulk

    def _window(self, segments: list[tuple[_Request, int, int]]) -> _Window:
        requests = [request for request, _, _ in segments]
        ids, types, lengths, owner, index, token = [], [], [], [], [], []
        any_types = any(r.type_ids is not None for r in requests)
        for k, (request, begin, end) in enumerate(segments):
            lo, hi = int(request.starts[begin]), int(request.starts[end])
            ids.append(request.ids[lo:hi])
            if any_types:
                types.append(request.type_ids[lo:hi] if request.type_ids is not None
                             else torch.zeros(hi - lo, dtype=torch.long))
            lengths.append(request.lengths[begin:end])
            owner.append(np.full(end - begin, k))
            index.append(np.arange(begin, end))
            token.append(np.full(end - begin, request.token))
        lengths_arr = np.concatenate(lengths)
        starts = np.concatenate(([0], np.cumsum(lengths_arr)[:-1]))
        pad = torch.tensor([self.pad_id], dtype=torch.long)
        return _Window(requests=requests, ids=torch.cat(ids + [pad]),
                       type_ids=torch.cat(types + [torch.zeros(1, dtype=torch.long)]) if any_types else None,
                       starts=starts, lengths=lengths_arr, owner=np.concatenate(owner),
                       index=np.concatenate(index), token=np.concatenate(token))

    def _collate_loop(self) -> None:
        # The batches of a bulk window not yet handed over. A bulk window is up to
        # `window_batches` batches, so its lengths sort into full batches; interactive
        # work that arrives meanwhile goes before the rest of them. A bulk batch is
        # collated only once the device has room for it, so the collator is never
        # stuck handing one over while interactive work waits to be batched.
        deferred: collections.deque = collections.deque()
        while True:
            if deferred:
                with self._cond:
                    while not (self._lanes[0] or self._closed or self._ready_room(bulk=True)):
                        self._cond.wait()
                    interactive_first, closed = bool(self._lanes[0]), self._closed
                if closed:
                    for window, rows in deferred:
                        _fail_owners(window, rows, RuntimeError("the pooling engine is closed"))
                    return
                if not interactive_first:
                    self._hand_over(*deferred.popleft(), bulk=True)
                    continue
            segments, bulk = self._take_segments()
            if not segments:
                if self._closed:
                    return
                continue
            window = self._window(segments)
            order = np.argsort(window.lengths, kind="stable")
            plan = [order[begin:end] for begin, end in
                    plan_batches(window.lengths[order], self.max_tokens, self.max_seqs, self.max_len)]
            if bulk:
                deferred.extend((window, rows) for rows in plan)
            else:
                for rows in plan:
                    self._hand_over(window, rows, bulk=False)

    def _ready_room(self, bulk: bool) -> bool:
        """Whether a collated batch of this kind may join those waiting for the device (under
        the lock): at most READY_DEPTH of each kind, and bulk only while no more than that wait
        in all, so an interactive batch has at most the running one ahead of it."""
        if bulk:
            return len(self._ready[0]) + len(self._ready[1]) < READY_DEPTH
        return len(self._ready[0]) < READY_DEPTH

    def _hand_over(self, window: _Window, rows: np.ndarray, bulk: bool) -> None:
        batch = self._to_device(window, rows)
        self._count(window, rows, batch)
        with self._cond:
            while not self._ready_room(bulk):  # back-pressure from the device
                self._cond.wait()
            self._ready[1 if bulk else 0].append((window, rows, batch))
            (self._interactive_ready if self._interactive is not None and not bulk else self._device_ready).notify()

    def _next_ready(self, lanes: tuple[int, ...] = (0, 1)):
        """The next collated batch of `lanes` for the device, interactive first; None once
        closed and drained."""
        wake = self._interactive_ready if lanes == (0,) else self._device_ready
        with self._cond:
            while not (any(self._ready[i] for i in lanes) or self._ready_closed):
                wake.wait()
            lane = next((self._ready[i] for i in lanes if self._ready[i]), None)
            job = lane.popleft() if lane else None
            self._cond.notify_all()  # room for the collator
            return job

    def _count(self, window: _Window, rows: np.ndarray, batch) -> None:
        if not isinstance(batch, Exception):
            self._add_stats(len(rows), int(window.lengths[rows].sum()), batch.input_ids.numel())

    def _add_stats(self, sequences: int, real_tokens: int, padded_tokens: int) -> None:
        self.stats["batches"] += 1
        self.stats["sequences"] += sequences
        self.stats["real_tokens"] += real_tokens
        self.stats["padded_tokens"] += padded_tokens

    def _to_device(self, window: _Window, rows: np.ndarray):
        try:
            return collate(window.ids, window.type_ids, window.starts[rows], window.lengths[rows],
                           window.token[rows], self.device, self.max_len)
        except Exception as exc:  # surfaced by the device thread, which isolates the bad request
            return exc

    # -- device thread ----------------------------------------------------
    def _device_loop(self) -> None:
        # On a CPU the bulk forwards keep the default OS priority: at nice +5 they yielded their
        # core to the batch's own tokenizing, validation, Postgres and scheduler threads, and a
        # batch's wall time was ~1.4x its forwards' CPU; an interactive batch has a device
        # thread of its own, so it does not wait for them (docs/benchmarks.md, run 25).
        lanes = (1,) if self._interactive is not None else (0, 1)
        hand_on = self._launched.put if self._deliverer is not None else self._hand_back
        while True:
            job = self._next_ready(lanes)
            if job is None:
                if self._deliverer is not None:
                    self._launched.put(None)
                return
            self._run(job, hand_on)

    def _interactive_loop(self) -> None:
        """A CPU's interactive batches, beside the bulk ones.

        On a GPU the device runs one batch at a time, and an interactive batch waits for
        the one running (milliseconds: the token budget is sized for that). On a CPU the
        device is the cores, and a bulk batch holds all of them for as long as a full
        token budget takes there (5-15 ms on 2 busy vCPUs): a one-text request arriving
        meanwhile waited for the rest of it, most of its latency under load. Here its
        forward starts at once, on the cores beside the bulk one (on one intra-op thread:
        CpuThreads), and its rows are handed back on this thread, with no copy to wait for.
        """
        while True:
            job = self._next_ready((0,))
            if job is None:
                return
            self._run(job, self._hand_back)

    def _run(self, job, hand_on) -> None:
        window, rows, batch = job
        try:
            self._launch(window, rows, batch, hand_on)
        except Exception as exc:  # a bug here must not kill the thread and hang every caller
            log.exception("pooling batch launch failed")
            _fail_owners(window, rows, exc)

    def _launch(self, window: _Window, rows: np.ndarray, batch, hand_on) -> None:
        try:
            if isinstance(batch, Exception):
                raise batch
            with torch.inference_mode():
                seq, tok = self.runner(batch)
                launched = _Launched(window, rows, _to_host(seq), _to_host(tok), _copy_done_event(self.device))
        except Exception as exc:
            if isinstance(exc, torch.cuda.OutOfMemoryError) and self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(rows) == 1:
                log.warning("pooling batch failed for one sequence: %s", exc)
                _fail(window.requests[int(window.owner[rows[0]])], exc)
                return
            # Split and retry: an OOM shrinks the batch, and any other error is
            # narrowed down to the request that causes it; the rest succeed.
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                self._launch(window, part, self._to_device(window, part), hand_on)
            return
        # To the delivery thread's queue, which blocks while one launched batch waits (at most
        # three on the device); or, on a CPU, handed back right here.
        hand_on(launched)

    # -- delivery thread --------------------------------------------------
    def _delivery_loop(self) -> None:
        while True:
            launched = self._launched.get()
            if launched is None:
                return
            self._hand_back(launched)

    def _hand_back(self, launched: _Launched) -> None:
        try:
            launched.wait()
            self._deliver(launched.window, launched.rows, launched.seq, launched.tok)
        except Exception as exc:  # an asynchronous device error, or a bug in delivery
            log.exception("pooling batch delivery failed")
            _fail_owners(launched.window, launched.rows, exc)

    def _deliver(self, window: _Window, rows: np.ndarray, seq: torch.Tensor | None,
                 tok: torch.Tensor | None) -> None:
        token = window.token[rows]
        if seq is not None:
            # Split by owner in numpy: every torch call releases the GIL and takes it back, and
            # in a busy worker each take-back waited for a switch interval behind the threads
            # running Python, several calls per owner, a few owners per batch.
            seq_rows = rows[~token]  # the order of DeviceBatch.seq_rows, so of seq
            owners = window.owner[seq_rows]
            host = _numpy(seq)
            for k in np.unique(owners).tolist():
                mine = owners == k
                window.requests[k].deliver_rows(window.index[seq_rows[mine]], host[mine], seq.dtype)
        if tok is not None:
            tok_rows = rows[token]
            per_row = torch.split(tok, window.lengths[tok_rows].tolist())
            owners = window.owner[tok_rows]
            for k in np.unique(owners).tolist():
                mine = np.flatnonzero(owners == k)
                window.requests[k].deliver_tokens(window.index[tok_rows[mine]], [per_row[i] for i in mine])


@dataclass
class _Launched:
    """A batch whose forward pass is queued on the device, its outputs on their way to the host."""

    window: _Window
    rows: np.ndarray
    seq: torch.Tensor | None
    tok: torch.Tensor | None
    copied: torch.cuda.Event | None  # None on a CPU, where the outputs are ready already

    def wait(self) -> None:
        if self.copied is not None:
            self.copied.synchronize()


# Output dtypes numpy lacks, handled as raw bits of the same width.
_BITS = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.int8, torch.float8_e5m2: torch.int8}


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A host tensor as a numpy array (a view; bits where numpy has no such dtype)."""
    return (t.view(_BITS[t.dtype]) if t.dtype in _BITS else t).numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(a)
    return t.view(dtype) if dtype in _BITS else t


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    """Start copying a device tensor to pinned host memory; don't wait for it."""
    if t is None or t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _copy_done_event(device: torch.device) -> torch.cuda.Event | None:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()  # after the copies, on the stream that ran them
    return event


def _os_named(loop):
    """`loop`, run under its thread's name in the OS too (Linux keeps the first 15 bytes), so
    that `top -H`, `ps -L` and /proc tell a batcher's threads apart (bench/system.py reads its
    device threads' CPU there): Python 3.11 names only its own Thread object."""
    def run() -> None:
        try:
            with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
                comm.write(threading.current_thread().name[:15])
        except OSError:  # no /proc (not Linux): the OS keeps the process's name for it
            pass
        loop()

    return run


def _fail_owners(window: _Window, rows: np.ndarray, exc: BaseException) -> None:
    for k in np.unique(window.owner[rows]).tolist():
        _fail(window.requests[k], exc)


def _fail(request: _Request, exc: BaseException) -> None:
    _settle(request.future.set_exception, exc)


def _settle(setter, value) -> None:
    # The submitter may cancel its future at any moment (it gave up on a
    # request whose later prompts failed validation); that is not an error.
    try:
        setter(value)
    except InvalidStateError:
        log.debug("result for a cancelled request dropped")
