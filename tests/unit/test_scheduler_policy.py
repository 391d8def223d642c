"""The scheduler's policy on its own: lanes, fair shares of tokens, head-of-line bounds."""
from __future__ import annotations

import collections

import numpy as np

from workers.scheduler.policy import Policy, Slice, Unit, adjacent_merged


def unit(key, tenant="a", n=1, tokens=10, bulk=False, flow=None) -> Unit:
    return Unit(key, tenant, bulk, np.arange(n + 1, dtype=np.int64) * tokens, flow=flow)


def drain(policy: Policy, budget: int, rounds: int = 10_000):
    order = []
    for _ in range(rounds):
        slices = policy.next_slices(budget)
        if not slices:
            break
        order.extend(slices)
    return order


def test_a_big_job_is_handed_out_in_slices_of_at_most_slice_tokens():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("big", n=1000, tokens=10))
    slices = drain(policy, budget=100)
    assert all(s.tokens <= 100 for s in slices)
    assert [s.begin for s in slices] == list(range(0, 1000, 10))
    assert slices[-1].end == 1000 and len(policy) == 0


def test_a_sequence_longer_than_a_slice_still_goes_alone():
    policy = Policy(slice_tokens=5, max_slice_seqs=64)
    policy.add(unit("long", n=3, tokens=50))
    assert [(s.begin, s.end) for s in drain(policy, budget=1)] == [(0, 1), (1, 2), (2, 3)]


def test_a_one_text_job_waits_for_at_most_one_slice_behind_a_big_job_of_another_tenant():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("big", tenant="a", n=20_000))
    policy.next_slices(200)  # the big job is already running
    policy.add(unit("small", tenant="b"))
    ahead = 0
    for s in drain(policy, budget=100):
        if s.unit.key == "small":
            break
        ahead += s.tokens
    assert ahead <= 100


def test_a_tenants_small_job_is_not_stuck_behind_its_own_big_job():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("big", n=20_000))
    policy.next_slices(100)
    policy.add(unit("small"))
    keys = [s.unit.key for s in policy.next_slices(300)]
    assert "small" in keys[:2]


def test_the_chunks_of_one_batch_go_in_order_while_the_tenant_s_other_flows_take_turns():
    """A batch's chunks one after another (the first finishes early and its successor can be
    sent and tokenized while the rest run); round robin only across the tenant's flows."""
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    for index in range(3):
        policy.add(unit(("batch", index), n=40, bulk=True, flow="batch"))
    policy.add(unit("other job", n=40, bulk=True))
    slices = drain(policy, budget=100)
    batch = [s.unit.key for s in slices if s.unit.flow == "batch"]
    assert batch == sorted(batch)  # chunk 0 whole, then 1, then 2
    flows = [s.unit.flow for s in slices]
    assert flows[:8] == ["batch", "other job"] * 4  # alternating across the two flows


def test_a_flow_that_ends_hands_its_turn_to_the_next_flow():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    for key in ("x", "y", "z"):
        policy.add(unit(key, n=10 if key == "x" else 20))  # x: one slice
    assert [s.unit.key for s in drain(policy, budget=100)][:5] == ["x", "y", "z", "y", "z"]


def test_dropping_a_chunk_keeps_the_rest_of_its_batch_in_order():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    for index in range(3):
        policy.add(unit(index, n=20, bulk=True, flow="batch"))
    policy.drop(1)
    assert [s.unit.key for s in drain(policy, budget=100)] == [0, 0, 2, 2]


def test_interactive_work_goes_before_bulk_whatever_arrived_first():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("chunk", n=500, bulk=True))
    policy.add(unit("job", n=30))
    order = [s.unit.key for s in drain(policy, budget=100)]
    assert order.index("chunk") > max(i for i, k in enumerate(order) if k == "job")


def test_two_backlogged_tenants_get_equal_tokens_whatever_their_job_sizes():
    policy = Policy(slice_tokens=64, max_slice_seqs=64)
    for i in range(2000):
        policy.add(unit(("a", i), tenant="a", n=1, tokens=8))  # many one-text jobs
    for i in range(4):
        policy.add(unit(("b", i), tenant="b", n=400, tokens=8))  # a few big ones
    served = collections.Counter()
    for _ in range(40):  # both still wait throughout: 16k and 12.8k tokens each
        for s in policy.next_slices(128):
            served[s.unit.tenant] += s.tokens
    assert policy.waiting(bulk=False) and len({u.tenant for u in policy._units.values()}) == 2
    assert min(served.values()) / max(served.values()) >= 0.8


def test_three_tenants_with_identical_work_progress_evenly():
    policy = Policy(slice_tokens=50, max_slice_seqs=64)
    for tenant in "abc":
        for i in range(20):
            policy.add(unit((tenant, i), tenant=tenant, n=50, tokens=10))
    served = collections.Counter()
    for _ in range(60):
        for s in policy.next_slices(150):
            served[s.unit.tenant] += s.end - s.begin
    assert min(served.values()) / max(served.values()) >= 0.8


def test_a_dropped_unit_hands_out_nothing_more():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("cancelled", n=1000))
    policy.add(unit("other", tenant="b", n=5))
    policy.next_slices(100)
    policy.drop("cancelled")
    assert {s.unit.key for s in drain(policy, budget=100)} == {"other"}
    assert len(policy) == 0 and not policy.waiting(bulk=False)


def test_slices_respect_the_sequence_cap():
    policy = Policy(slice_tokens=10_000, max_slice_seqs=16)
    policy.add(unit("many", n=100, tokens=1))
    assert all(s.end - s.begin <= 16 for s in drain(policy, budget=10_000))


def test_an_idle_tenant_saves_up_no_credit():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("a1", tenant="a", n=1, tokens=10))
    drain(policy, budget=1000)  # a is served and leaves: its leftover credit goes with it
    policy.add(unit("b", tenant="b", n=100, tokens=10))
    policy.add(unit("a2", tenant="a", n=100, tokens=10))
    first = [s.unit.tenant for s in policy.next_slices(400)]
    assert first.count("a") <= first.count("b") + 1


def test_preparation_takes_tenants_in_turn_and_interactive_work_first():
    from workers.scheduler.fairqueue import FairQueue

    queue = FairQueue()
    for i in range(3):
        queue.put(False, "a", f"a{i}")  # a's three jobs arrived first
    queue.put(True, "b", "b-chunk")
    queue.put(False, "b", "b0")
    order = [queue.get(timeout=0.1) for _ in range(5)]
    assert order == ["a0", "b0", "a1", "a2", "b-chunk"]
    assert queue.get(timeout=0.01) is None


def test_preparation_takes_a_batch_s_chunks_in_chunk_order_before_the_tenant_s_other_bulk_work():
    """A chunk put back for its next piece goes before the later chunks of its batch."""
    from workers.scheduler.fairqueue import FairQueue

    queue = FairQueue()
    queue.put(True, "a", "a-bulk-job")
    for index in range(3):
        queue.put(True, "a", f"chunk{index}", rank=("batch", index))
    queue.put(True, "b", "b-chunk0", rank=("other", 0))
    assert queue.get(timeout=0.1) == "chunk0"  # a's turn: its first chunk
    assert queue.get(timeout=0.1) == "b-chunk0"  # b's turn
    queue.put(True, "a", "chunk0", rank=("batch", 0))  # chunk 0's next piece
    assert [queue.get(timeout=0.1) for _ in range(4)] == ["chunk0", "chunk1", "chunk2", "a-bulk-job"]


def test_slices_that_continue_one_another_merge_and_the_order_holds():
    """What the dispatcher sends as one engine request: a unit's slices back to back merge,
    and nothing else does (another unit between, or a gap in the sequences)."""
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("big", n=100, tokens=10))
    slices = policy.next_slices(10 * 100 * 10)
    assert len(slices) == 10
    merged = adjacent_merged(slices)
    assert [(s.unit.key, s.begin, s.end, s.tokens) for s in merged] == [("big", 0, 100, 1000)]
    capped = adjacent_merged(slices, most_tokens=300)
    assert [(s.begin, s.end, s.tokens) for s in capped] == [(0, 30, 300), (30, 60, 300), (60, 90, 300), (90, 100, 100)]

    a, b = unit("a", n=30), unit("b", tenant="t2", n=30)
    order = [Slice(a, 0, 10, 100), Slice(a, 10, 20, 100), Slice(b, 0, 10, 100), Slice(a, 20, 30, 100),
             Slice(b, 20, 30, 100)]
    assert [(s.unit.key, s.begin, s.end, s.tokens) for s in adjacent_merged(order)] == [
        ("a", 0, 20, 200), ("b", 0, 10, 100), ("a", 20, 30, 100), ("b", 20, 30, 100)]
    assert adjacent_merged([]) == []
    gap = [Slice(a, 0, 10, 100), Slice(a, 20, 30, 100)]  # sequences 10-19 went elsewhere (dropped)
    assert adjacent_merged(gap) == gap


def test_merged_slices_of_two_backlogged_tenants_cover_each_sequence_once():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("a", n=500, tokens=7))
    policy.add(unit("b", tenant="t2", n=300, tokens=13))
    seen = collections.Counter()
    for _ in range(1000):
        slices = policy.next_slices(2048)
        if not slices:
            break
        merged = adjacent_merged(slices)
        # The two take turns, so only the one left at the end has slices back to back.
        keys = [s.unit.key for s in slices]
        assert [s.unit.key for s in merged] == [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert sum(s.tokens for s in merged) == sum(s.tokens for s in slices)
        for s in merged:
            seen.update((s.unit.key, i) for i in range(s.begin, s.end))
    assert len(seen) == 800 and set(seen.values()) == {1}


def test_a_flow_s_waiting_tokens_follow_its_units_in_and_its_slices_out():
    policy = Policy(slice_tokens=100, max_slice_seqs=64)
    policy.add(unit("c0", n=30, tokens=10, bulk=True, flow="batch"))
    policy.add(unit("c1", n=30, tokens=10, bulk=True, flow="batch"))
    policy.add(unit("job", n=5, tokens=10))
    assert (policy.waiting_tokens("batch"), policy.waiting_tokens("job")) == (600, 50)
    handed = policy.next_slices(250)  # the interactive job's 50, then two slices of the first chunk
    assert [s.tokens for s in handed] == [50, 100, 100]
    assert (policy.waiting_tokens("batch"), policy.waiting_tokens("job")) == (400, 0)
    policy.drop("c1")  # cancelled: its 300 will never be handed out
    assert policy.waiting_tokens("batch") == 100
    drain(policy, budget=100)
    assert policy.waiting_tokens("batch") == 0
