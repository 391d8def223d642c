"""Which slice of which work goes into the engine next: a pure function of the scheduler's state.

No clock, no I/O, no torch: the runtime (workers/scheduler/runtime.py) owns
threads, the engine and the database; this class only orders work, so its
fairness and head-of-line bounds are unit-tested on their own.

Order, from the top:
1. Lanes: interactive work (jobs with priority <= 0) before bulk work (batch
   chunks, priority > 0). Bulk runs only while no interactive work waits.
2. Tenants, within a lane: deficit round robin by tokens. Each turn a
   tenant gets `quantum` tokens of credit and spends it on slices; a tenant
   with nothing left drops out and loses its credit, so idling never saves
   up a burst. Two backlogged tenants get equal tokens whatever their job
   sizes.
3. Flows, within a tenant: round robin, one slice per turn, so a tenant's
   one-text job never waits behind its own 20k-text job. A flow is a job,
   or a batch: its chunks (and a streamed job's or chunk's pieces) go in the
   order they came, one after another. Round robin across the chunks of one
   batch made the chunks in flight progress in lockstep and finish together,
   and the next ones were only then sent, claimed and tokenized, with the
   device idle; in order, the first finishes early and its successor is
   ready before the others end.
A unit is handed out a slice at a time (at most `slice_tokens` tokens, at
least one sequence), so with the runtime keeping about a batch or two of
tokens in the engine, a newcomer waits for at most that plus one slice per
tenant ahead of it in the round.
"""
from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Unit:
    """One run of sequences to schedule: a job, or one parameter group of a batch chunk."""

    key: Hashable
    tenant: Hashable
    bulk: bool
    starts: np.ndarray  # cumulative token counts: starts[i] is where sequence i begins; len n + 1
    next: int = 0  # the first sequence not yet handed out
    flow: Hashable = None  # the job or batch it belongs to (None: a flow of its own)

    def __post_init__(self):
        if self.flow is None:
            self.flow = self.key

    @property
    def size(self) -> int:
        return len(self.starts) - 1

    @property
    def done(self) -> bool:
        return self.next >= self.size

    @property
    def tokens_left(self) -> int:
        return int(self.starts[-1] - self.starts[self.next])


@dataclass(frozen=True)
class Slice:
    unit: Unit
    begin: int
    end: int
    tokens: int


@dataclass(eq=False)
class _Tenant:
    key: Hashable
    flows: collections.deque = field(default_factory=collections.deque)  # of deques of units, in turn order
    by_flow: dict = field(default_factory=dict)  # flow key -> its deque in `flows` (thousands may be in flight)
    deficit: int = 0

    def add(self, unit: Unit) -> None:
        flow = self.by_flow.get(unit.flow)
        if flow is None:
            flow = self.by_flow[unit.flow] = collections.deque()
            self.flows.append(flow)
        flow.append(unit)

    def forget(self, flow: collections.deque, key: Hashable) -> None:
        """`flow` has no unit left: out of the turns."""
        del self.by_flow[key]
        if self.flows and self.flows[0] is flow:
            self.flows.popleft()  # the next flow is at the front now
        else:
            self.flows.remove(flow)


class _Lane:
    def __init__(self):
        self.active: collections.deque[_Tenant] = collections.deque()
        self.tenants: dict[Hashable, _Tenant] = {}


class Policy:
    def __init__(self, slice_tokens: int, max_slice_seqs: int, quantum: int | None = None):
        self.slice_tokens = slice_tokens
        self.max_slice_seqs = max_slice_seqs
        self.quantum = quantum or slice_tokens
        self._lanes = (_Lane(), _Lane())  # interactive, bulk
        self._units: dict[Hashable, Unit] = {}
        # Tokens not yet handed out, per flow. Kept as they change, so that another thread can read
        # a flow's with one dict lookup (the runtime's preparation: how far ahead to tokenize).
        self._waiting: dict[Hashable, int] = {}

    def __len__(self) -> int:
        """Units with sequences not yet handed out."""
        return len(self._units)

    def waiting(self, bulk: bool) -> bool:
        return bool(self._lanes[1 if bulk else 0].active)

    def waiting_tokens(self, flow: Hashable) -> int:
        """Tokens of the flow's units not yet handed out."""
        return self._waiting.get(flow, 0)

    def _count(self, flow: Hashable, tokens: int) -> None:
        left = self._waiting.get(flow, 0) + tokens
        if left > 0:
            self._waiting[flow] = left
        else:
            self._waiting.pop(flow, None)

    def add(self, unit: Unit) -> None:
        if unit.done or unit.key in self._units:
            return
        self._units[unit.key] = unit
        self._count(unit.flow, unit.tokens_left)
        lane = self._lanes[1 if unit.bulk else 0]
        tenant = lane.tenants.get(unit.tenant)
        if tenant is None:
            tenant = lane.tenants[unit.tenant] = _Tenant(unit.tenant)
            lane.active.append(tenant)  # a newcomer takes its turn after the tenants already waiting
        tenant.add(unit)

    def drop(self, key: Hashable) -> None:
        """Hand out nothing more of this unit (cancelled, or taken over by another worker)."""
        unit = self._units.pop(key, None)
        if unit is None:
            return
        self._count(unit.flow, -unit.tokens_left)
        lane = self._lanes[1 if unit.bulk else 0]
        tenant = lane.tenants[unit.tenant]
        flow = tenant.by_flow[unit.flow]
        flow.remove(unit)
        if not flow:
            tenant.forget(flow, unit.flow)
        if not tenant.flows:
            self._retire(lane, tenant)

    def next_slices(self, budget: int) -> list[Slice]:
        """Slices worth about `budget` tokens (at least one slice when any work waits), in order."""
        out: list[Slice] = []
        while budget > 0:
            lane = self._lanes[0] if self._lanes[0].active else self._lanes[1]
            if not lane.active:
                break
            tenant = lane.active[0]
            unit = tenant.flows[0][0]
            end = self._slice_end(unit)
            cost = int(unit.starts[end] - unit.starts[unit.next])
            if tenant.deficit < cost:
                # Out of credit: top up for its next turn and let the next tenant go.
                tenant.deficit += self.quantum
                lane.active.rotate(-1)
                continue
            tenant.deficit -= cost
            budget -= cost
            out.append(Slice(unit, unit.next, end, cost))
            unit.next = end
            self._count(unit.flow, -cost)
            if unit.done:
                del self._units[unit.key]
                flow = tenant.flows[0]
                flow.popleft()
                if not flow:
                    tenant.forget(flow, unit.flow)
                    if not tenant.flows:
                        self._retire(lane, tenant)
                    continue
            tenant.flows.rotate(-1)  # the tenant's other flows go first next time
        return out

    def _slice_end(self, unit: Unit) -> int:
        limit = unit.starts[unit.next] + self.slice_tokens
        end = int(np.searchsorted(unit.starts, limit, side="right")) - 1
        return min(max(end, unit.next + 1), unit.next + self.max_slice_seqs, unit.size)

    @staticmethod
    def _retire(lane: _Lane, tenant: _Tenant) -> None:
        lane.active.remove(tenant)
        del lane.tenants[tenant.key]


def adjacent_merged(slices: list[Slice], most_tokens: int | None = None) -> list[Slice]:
    """`slices` in the same order, each run of slices that continue one another (the same
    unit, the next sequences) as one slice of at most `most_tokens` (any number: None).

    The policy hands a unit out a slice at a time so that other work can come between;
    when none does, its slices come back to back, and sent as they are each would be an
    engine request of its own (the dispatcher's caller: workers/scheduler/dispatch.py)."""
    out: list[Slice] = []
    for s in slices:
        last = out[-1] if out else None
        if (last is not None and last.unit is s.unit and last.end == s.begin
                and (most_tokens is None or last.tokens + s.tokens <= most_tokens)):
            out[-1] = Slice(s.unit, last.begin, s.end, last.tokens + s.tokens)
        else:
            out.append(s)
    return out
