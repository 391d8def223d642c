"""One model's dispatcher: the thread that feeds the engine from the policy.

It keeps about `inflight_tokens` in the engine (a batch on the device and
one collated behind it), so the batcher always has a full batch to form
when there is work, and everything else waits here, where the policy can
still put a newcomer first. With one request in the system it is submitted
at once: there is no fixed wait.

All state is owned by the dispatcher thread; other threads talk to it
through its event queue (work added or dropped, slices back from the engine).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from workers.metrics import SEQUENCES_RUN, TOKENS_RUN
from workers.scheduler.held import Held, State
from workers.scheduler.policy import Policy, Slice, Unit, adjacent_merged

log = logging.getLogger(__name__)

# Batches' worth of tokens an engine request may hold (merged slices of one unit). A request's
# completion is a future settled, its done callback and a wake-up of the dispatcher, on the
# device thread: once per batch at one batch's tokens (~257 for a 5,000-text job, the engine in
# process 20), ~150 at two, and the device thread's CPU for handing rows back fell from 0.071
# to 0.063 s for that job (benchmarks.md run 26; eight saved no more). Work still comes back,
# and room for more opens, every couple of batches of the 8-batch window.
REQUEST_BATCHES = 2


class Dispatcher:
    def __init__(self, model: str, engine, on_complete: Callable[[Held], None], on_room: Callable[[Held], None],
                 slice_tokens: int, inflight_tokens: int, max_slice_seqs: int):
        self.model = model
        self.engine = engine
        self._on_complete = on_complete
        self._policy = Policy(slice_tokens, max_slice_seqs)
        self._slice_tokens, self._slice_seqs = slice_tokens, max_slice_seqs
        self._room = inflight_tokens
        self._batch_tokens = engine.max_batch_tokens
        self._inflight = 0  # tokens submitted to the engine and not yet back
        self._held: dict[object, Held] = {}  # work with units in the policy or slices in the engine
        self._whole: list[Slice] = []  # small jobs admitted this turn, submitted together at its end
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        # Streamed work whose flow (a job, or a batch) has a window's worth or more of tokens in
        # the policy, not yet in the engine, is parked (park_if_ahead) and handed back to
        # `on_room`, to make its next unit, once the flow runs low.
        self._ahead = inflight_tokens
        self._parked: dict = {}  # flow -> its parked work
        self._parked_lock = threading.Lock()
        self._on_room = on_room
        self._thread = threading.Thread(target=self._loop, name=f"poolq-dispatch-{model}", daemon=True)
        self._thread.start()

    # -- any thread ------------------------------------------------------------
    def add(self, held: Held) -> None:
        self._events.put(("add", [held]))

    def add_many(self, helds: list[Held]) -> None:
        """Work prepared together (a claimed group): one event, so its small jobs reach the
        engine as one submission, and so one batch."""
        self._events.put(("add", helds))

    def extend(self, held: Held, unit) -> None:
        """One more unit of streamed work (work.Plan.more), in order."""
        self._events.put(("extend", (held, unit)))

    def seal(self, held: Held, error: BaseException | None = None) -> None:
        """No more units of this work will come; `error` if making the next one failed."""
        self._events.put(("seal", (held, error)))

    def drop(self, held: Held) -> None:
        """Hand out nothing more of this work (it was cancelled or taken over)."""
        self._events.put(("drop", held))

    def park_if_ahead(self, held: Held) -> bool:
        """Whether the next unit of `held` (streamed work, or a batch's next chunk) should wait to be
        tokenized: its flow has a bulk window's worth or more waiting here. If so it is kept and
        handed to `on_room` once the flow has less.

        Tokenized as fast as the tokenizer goes, a 5,000-line batch had its first four chunks (2,000
        lines) tokenized in its first ~0.15 s, beside the first forwards on the same cores, while the
        device needed only the first chunk's lines for that time; its first chunk ran at half the speed
        of the rest. With a window waiting here and another in the engine, the device has ~16
        batches' work in hand while the next unit is made (a 256-text unit: ~10 batches, tokenized in
        the time of ~3)."""
        flow = _flow(held)
        with self._parked_lock:
            if self._policy.waiting_tokens(flow) < self._ahead:
                return False
            self._parked.setdefault(flow, []).append(held)
            return True

    def stop(self) -> None:
        self._events.put(("stop", None))
        self._thread.join(timeout=5)

    # -- the dispatcher thread -------------------------------------------------
    def _loop(self) -> None:
        while True:
            event = self._events.get()
            while True:  # take every event waiting, then fill the engine once
                if event[0] == "stop":
                    return
                try:
                    self._handle(*event)
                except Exception:  # noqa: BLE001 - a bug here must not stop every job of the model
                    log.exception("scheduler event %s failed", event[0])
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break
            try:
                self._fill()
            except Exception:  # noqa: BLE001
                log.exception("dispatching to the engine failed")
            if self._parked:
                self._unpark()

    def _unpark(self) -> None:
        """Hand back the parked work of flows that now have less than a window waiting."""
        with self._parked_lock:
            ready = [flow for flow in self._parked if self._policy.waiting_tokens(flow) < self._ahead]
            helds = [held for flow in ready for held in self._parked.pop(flow)]
        for held in helds:
            self._on_room(held)

    def _handle(self, kind: str, arg) -> None:
        if kind == "add":
            for held in arg:
                self._admit(held)
        elif kind == "done":
            self._done(*arg)
        elif kind == "extend":
            self._extend(*arg)
        elif kind == "seal":
            self._seal(*arg)
        elif kind == "drop":
            self._drop_units(arg)
            if not arg.outstanding:
                self._held.pop(arg.key, None)

    def _admit(self, held: Held) -> None:
        units = held.prepared.units
        held.parts = [{} for _ in units]
        held.remaining = sum(len(u) for u in units)
        if held.state is not State.PREPARING:
            return  # abandoned while it was tokenized
        held.state = State.RUNNING
        self._held[held.key] = held
        if self._whole_small(held):
            # One slice's worth: straight to the engine's interactive lane, which the collator
            # serves before any bulk window. Waiting in the policy for a batch's worth of room
            # would queue it behind the big work it is there to pass.
            unit = units[0]
            self._whole.append(Slice(Unit((held.key, 0), held.tenant, False, unit.starts), 0, len(unit),
                                     unit.tokens()))
            return
        for i, unit in enumerate(units):
            if len(unit):
                self._policy.add(Unit((held.key, i), held.tenant, held.bulk, unit.starts, flow=_flow(held)))
        self._maybe_complete(held)

    def _whole_small(self, held: Held) -> bool:
        units = held.prepared.units
        return (not held.bulk and held.sealed and len(units) == 1 and 0 < len(units[0]) <= self._slice_seqs
                and units[0].tokens() <= self._slice_tokens)

    def _extend(self, held: Held, unit) -> None:
        if held.state is not State.RUNNING or held.error is not None:
            return  # abandoned or failed meanwhile: nothing more of it runs
        index = len(held.prepared.units)
        held.prepared.units.append(unit)
        held.parts.append({})
        held.remaining += len(unit)
        if len(unit):
            self._policy.add(Unit((held.key, index), held.tenant, held.bulk, unit.starts, flow=_flow(held)))

    def _seal(self, held: Held, error: BaseException | None) -> None:
        held.sealed = True
        if held.state is not State.RUNNING:
            return
        if error is not None and held.error is None:
            held.error = error
            self._drop_units(held)
        self._maybe_complete(held)

    def _maybe_complete(self, held: Held) -> None:
        """Hand the work on once every unit is made and back (or it failed and nothing is out)."""
        if not held.sealed or held.outstanding:
            return
        if held.remaining <= 0 or held.error is not None:
            self._held.pop(held.key, None)
            self._on_complete(held)

    def _drop_units(self, held: Held) -> None:
        for i in range(len(held.parts)):
            self._policy.drop((held.key, i))

    def _fill(self) -> None:
        if self._whole:
            # Every small job that arrived since the last turn, in one submission: with
            # the engine idle they run as one batch on this thread, and while it runs
            # the next ones gather here (load-adaptive: no timer, no lone wait).
            whole, self._whole = [s for s in self._whole if s.unit.key[0] in self._held], []
            if whole:  # (less any dropped meanwhile)
                self._submit(whole)
        room = self._room - self._inflight
        if room <= 0 or not len(self._policy):
            return
        if self._inflight and room < self._batch_tokens:
            # Busy: wait until a whole batch's worth is free, then hand it over at
            # once. Refilled slice by slice as they come back, the collator would
            # take each alone and the device would run part-empty batches.
            return
        self._submit(self._policy.next_slices(room))

    def _submit(self, slices: list[Slice]) -> None:
        submits, owners = [], []
        # A unit's slices that came back to back go as one engine request. Each request is a
        # future, a done callback that wakes this thread and, on the device thread between two
        # forwards, a share of each batch's delivery (its rows split by owner): a 5,000-text
        # job was ~800 requests of a quarter batch, ~4 owners a batch, and the device thread
        # idled 0.09 s between its forwards against 0.05 merged (docs/benchmarks.md, run 23).
        # At most REQUEST_BATCHES batches' tokens each (why: at its definition, above).
        for s in adjacent_merged(slices, REQUEST_BATCHES * self._batch_tokens):
            held_key, index = s.unit.key
            held = self._held[held_key]
            unit = held.prepared.units[index]
            # A small job, whole in one slice, goes to the engine's interactive lane: it is
            # batched before the rest of a bulk window (models/batcher.py). Everything else
            # goes to the bulk lane in the policy's order, where windows of several batches
            # sort by length into full batches. (Merged slices of a bigger job may cover it
            # whole: they go to the bulk lane, as its slices did.)
            whole = self._whole_small(held) and s.end - s.begin == len(unit)
            submits.append((unit, s.begin, s.end, 0 if whole else 1))
            owners.append((held, index, s))
        futures = self.engine.submit(submits)
        for future, (held, index, s) in zip(futures, owners):
            self._inflight += s.tokens
            held.outstanding += 1
            future.add_done_callback(lambda f, a=(held, index, s): self._events.put(("done", (*a, f))))

    def _done(self, held: Held, index: int, s, future) -> None:
        self._inflight -= s.tokens
        held.outstanding -= 1
        if held.state is not State.RUNNING:
            if not held.outstanding:
                self._held.pop(held.key, None)
            return  # abandoned meanwhile (cancelled, taken over): its outputs are not wanted
        try:
            held.parts[index][s.begin] = future.result()
            held.remaining -= s.end - s.begin
            tenant = str(held.tenant)
            SEQUENCES_RUN.labels(self.model, tenant).inc(s.end - s.begin)
            TOKENS_RUN.labels(self.model, tenant).inc(s.tokens)
        except Exception as exc:  # noqa: BLE001 - the engine failed these sequences: the work fails
            if held.error is None:
                log.warning("the engine failed a slice of %s %s: %r", held.kind, held.key, exc)
                held.error = exc
                self._drop_units(held)
        self._maybe_complete(held)


def _flow(held: Held):
    """What the policy keeps in order: a job's units, or all the chunks of one batch."""
    return ("batch", held.key[0]) if held.kind == "chunk" else ("job", held.key)
