"""Batching invariance, concurrency, error isolation and the collator."""
from __future__ import annotations

import copy
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from engine_cases import classify_concurrently
from models.batcher import Batcher
from models.collate import collate, padded_len, plan_batches

TOL = 1e-5


def _texts(n, seed=0):
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "quickly", "under", "berlin", "x"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 90))) for _ in range(n)]


@pytest.mark.parametrize("name", ["bert", "qwen"])
def test_alone_equals_mixed(request, model_dirs, engine_factory, name):
    alone = request.getfixturevalue(name)
    # Tiny budget: the mixed run is cut into many batches of varied shapes.
    mixed = engine_factory(model_dirs[name], max_batch_tokens=256, max_batch_seqs=5)
    texts = _texts(40)
    singles = [alone.classify(t, use_activation=False)[0].probs for t in texts]
    together = [o.probs for o in mixed.classify(texts, use_activation=False)]
    assert torch.tensor(together) == pytest.approx(torch.tensor(singles), abs=TOL)


def test_token_outputs_invariant_to_batching(ner, model_dirs, engine_factory):
    mixed = engine_factory(model_dirs["ner"], max_batch_tokens=256, max_batch_seqs=7)
    texts = _texts(20, seed=1)
    together = mixed.encode(texts, pooling_task="token_classify")
    for text, out in zip(texts, together):
        single = ner.encode(text, pooling_task="token_classify")[0]
        assert torch.tensor(out.data) == pytest.approx(torch.tensor(single.data), abs=TOL)


def test_concurrent_callers_get_their_own_results(bert, model_dirs, engine_factory):
    shared = engine_factory(model_dirs["bert"], max_batch_tokens=1024, max_wait_ms=5)
    jobs = [_texts(random.Random(i).randint(1, 12), seed=100 + i) for i in range(24)]
    expected = [[o.probs for o in bert.classify(j)] for j in jobs]
    results = classify_concurrently(shared, jobs, timeout=60)
    for i, want in enumerate(expected):
        assert torch.tensor(results[i]) == pytest.approx(torch.tensor(want), abs=TOL)


def test_large_request_spans_chunks(bert):
    texts = _texts(1100, seed=3)  # > 2 tokenizer chunks, submitted as they are ready
    outs = bert.classify(texts)
    assert len(outs) == 1100
    assert outs[700].probs == pytest.approx(bert.classify(texts[700])[0].probs, abs=TOL)


def test_mixed_tasks_share_batches(model_dirs, engine_factory):
    engine = engine_factory(model_dirs["qwen"], task="token_classify")
    seq_engine = engine_factory(model_dirs["qwen"])
    # The same runner pools some rows and returns all tokens of others.
    fut_seq = engine._batcher.submit(torch.tensor([101, 2000, 102]), [3], token=False)
    fut_tok = engine._batcher.submit(torch.tensor([101, 2000, 2001, 102]), [4], token=True)
    assert fut_tok.result()[0].shape == (4, 2)
    assert fut_seq.result()[0].tolist() == pytest.approx(
        seq_engine.classify([[101, 2000, 102]], use_activation=False)[0].probs, abs=TOL)


class _FlakyRunner:
    """Fails any batch holding token id 666; otherwise returns the row sums."""

    def __call__(self, b):
        if (b.input_ids == 666).any():
            raise RuntimeError("poisoned sequence")
        return (b.input_ids * b.attention_mask).sum(1, keepdim=True).float(), None


def _one(ids):
    return torch.tensor(ids), [len(ids)]


def test_one_bad_request_never_fails_the_others():
    batcher = Batcher(_FlakyRunner(), torch.device("cpu"), 512, 64, 20.0, 128)
    try:
        good = [batcher.submit(*_one([i, 1, 1]), token=False) for i in range(10)]
        bad = batcher.submit(torch.tensor([666, 1, 5]), [2, 1], token=False)
        more = [batcher.submit(*_one([i, 2]), token=False) for i in range(10)]
        with pytest.raises(RuntimeError, match="poisoned"):
            bad.result(10)
        assert [f.result(10)[0].item() for f in good] == [i + 2 for i in range(10)]
        assert [f.result(10)[0].item() for f in more] == [i + 2 for i in range(10)]
    finally:
        batcher.close()


def test_lone_request_waits_at_most_max_wait():
    batcher = Batcher(_FlakyRunner(), torch.device("cpu"), 4096, 64, 5.0, 128)
    try:
        batcher.submit(*_one([1]), token=False).result(10)  # warm
        start = time.perf_counter()
        batcher.submit(*_one([1, 2]), token=False).result(10)
        assert time.perf_counter() - start < 0.25
    finally:
        batcher.close()


def test_plan_batches_respects_budget():
    lengths = np.array(sorted(random.Random(0).randint(1, 120) for _ in range(300)))
    bounds = plan_batches(lengths, max_tokens=512, max_seqs=16, max_len=128)
    assert bounds[0][0] == 0 and bounds[-1][1] == 300
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, nothing dropped
    for begin, end in bounds:
        assert end - begin <= 16
        assert end - begin == 1 or (end - begin) * padded_len(int(lengths[end - 1]), 128) <= 512
        # greedy: one more row would have broken a limit
        if end < 300 and end - begin < 16:
            assert (end - begin + 1) * padded_len(int(lengths[end]), 128) > 512


def test_plan_batches_runs_an_over_budget_sequence_alone():
    assert plan_batches(np.array([4, 300, 301]), max_tokens=256, max_seqs=8, max_len=512) == [(0, 1), (1, 2), (2, 3)]


def test_collate_pads_right_to_multiple_of_8():
    flat = torch.tensor([5, 6, 7] + [8] * 9 + [1])  # two rows, then the pad element
    b = collate(flat, None, np.array([0, 3]), np.array([3, 9]), np.array([False, True]), torch.device("cpu"), 512)
    assert b.input_ids.shape == (2, 16)
    assert b.input_ids[0, :4].tolist() == [5, 6, 7, 1] and b.attention_mask[0].sum() == 3
    assert b.input_ids[1].tolist() == [8] * 9 + [1] * 7
    assert b.seq_rows.tolist() == [0] and b.token_rows.tolist() == [1]
    assert padded_len(126, 128) == 128 and padded_len(127, 126) == 127


def test_batcher_rejects_lengths_that_do_not_match_ids():
    batcher = Batcher(_FlakyRunner(), torch.device("cpu"), 512, 64, 1.0, 128)
    try:
        with pytest.raises(ValueError):
            batcher.submit(torch.tensor([1, 2, 3]), [2, 2], token=False)
        with pytest.raises(ValueError):
            batcher.submit(torch.tensor([1, 2]), [2, 0], token=False)
    finally:
        batcher.close()


def test_a_request_larger_than_a_window_is_split_across_windows():
    # window = 2 batches x 4 seqs; 50 sequences of one request span many windows.
    batcher = Batcher(_FlakyRunner(), torch.device("cpu"), 64, 4, 1.0, 32, window_batches=2)
    try:
        rng = random.Random(5)
        rows = [[rng.randint(1, 9) for _ in range(rng.randint(1, 20))] for _ in range(50)]
        out = batcher.submit(torch.tensor([t for r in rows for t in r]), [len(r) for r in rows], token=False)
        assert out.result(10)[:, 0].tolist() == [float(sum(r)) for r in rows]
        assert batcher.stats["batches"] >= 13
    finally:
        batcher.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rows_come_back_in_the_runners_dtype_to_each_owner_in_its_order(dtype):
    # Rows are split by owner in numpy, which has no bfloat16: they travel as raw bits.
    class Runner:
        def __call__(self, b):
            sums = (b.input_ids * b.attention_mask).sum(1, keepdim=True)
            return torch.cat([sums, -sums], 1).to(dtype), None

    batcher = Batcher(Runner(), torch.device("cpu"), 64, 4, 0.0, 32, window_batches=2)
    try:
        rng = random.Random(7)
        requests = [[[rng.randint(1, 9) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 9))]
                    for _ in range(12)]
        futures = batcher.submit_many([(torch.tensor([t for r in rows for t in r]), [len(r) for r in rows],
                                        False, None, 1) for rows in requests])
        for rows, future in zip(requests, futures):
            out = future.result(10)
            assert out.dtype == dtype
            assert out.tolist() == [[float(sum(r)), -float(sum(r))] for r in rows]
    finally:
        batcher.close()


def test_models_package_does_not_import_torch():
    code = ("import sys, models, models.catalog; from models import PoolingInputError; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_interactive_work_overtakes_a_bulk_backlog(tmp_path):
    """A bulk backlog (priority 1) does not delay an interactive request behind it."""
    import threading
    import time as _time

    import tiny_models
    from models import PoolingEngine

    path = tiny_models.build_bert_classifier(tmp_path / "prio", num_labels=2)
    engine = PoolingEngine(model=str(path), max_batch_tokens=256, max_batch_seqs=8, max_wait_ms=0, device="cpu")
    try:
        bulk_texts = ["bulk text " * 20] * 3000
        done = {}

        def bulk():
            engine.classify(bulk_texts, priority=1)
            done["bulk"] = _time.monotonic()

        thread = threading.Thread(target=bulk)
        thread.start()
        _time.sleep(0.3)  # the backlog is queued
        start = _time.monotonic()
        interactive = engine.classify(["urgent"])
        done["interactive"] = _time.monotonic()
        thread.join()
        assert len(interactive) == 1
        assert done["interactive"] < done["bulk"]
        # and it did not wait for the backlog: far less than the bulk's own duration
        assert done["interactive"] - start < (done["bulk"] - start) / 3
    finally:
        engine.close()


def test_prepared_slices_in_any_order_equal_the_offline_call(bert, ner):
    """The scheduling API (prepare, submit slices of many requests at once, finish) gives
    exactly what the offline methods give."""
    texts = _texts(37, seed=5)
    prepared = bert.prepare_classify(texts)
    assert len(prepared) == 37 and prepared.tokens() == sum(o.num_prompt_tokens for o in bert.classify(texts))
    tokens = ner.prepare_encode(texts[:9], pooling_task="token_classify")
    bounds = [(0, 5), (5, 6), (6, 30), (30, 37)]
    futures = bert.submit([(prepared, b, e, 0) for b, e in reversed(bounds)])[::-1]
    token_futures = ner.submit([(tokens, 0, 4, 1), (tokens, 4, 9, 1)])
    outs = prepared.finish([f.result(timeout=30) for f in futures])
    assert torch.tensor([o.probs for o in outs]) == pytest.approx(torch.tensor([o.probs for o in bert.classify(texts)]), abs=TOL)
    assert [o.label for o in outs] == [o.label for o in bert.classify(texts)]
    token_outs = tokens.finish([f.result(timeout=30) for f in token_futures])
    for out, want in zip(token_outs, ner.encode(texts[:9], pooling_task="token_classify")):
        assert torch.tensor(out.data) == pytest.approx(torch.tensor(want.data), abs=TOL)


def test_a_streamed_request_is_the_offline_call_a_chunk_at_a_time(bert, ner):
    """stream_*: one Prepared per tokenizer chunk, in order, together exactly the offline outputs;
    a bad prompt raises when its chunk is reached, not before."""
    from models import engine as engine_module

    texts = _texts(engine_module.CHUNK * 2 + 7, seed=9)
    units = list(bert.stream_classify(texts))
    assert [len(u) for u in units] == [engine_module.CHUNK, engine_module.CHUNK, 7]
    outs = [o for u in units for o in u.finish([bert.submit([(u, 0, len(u), 0)])[0].result(timeout=60)])]
    want = bert.classify(texts)
    assert [o.label for o in outs] == [o.label for o in want]
    assert torch.tensor([o.probs for o in outs]) == pytest.approx(torch.tensor([o.probs for o in want]), abs=TOL)
    tokens = [o for u in ner.stream_encode(texts[:300], pooling_task="token_classify")
              for o in u.finish([ner.submit([(u, 0, len(u), 0)])[0].result(timeout=60)])]
    for out, expected in zip(tokens, ner.encode(texts[:300], pooling_task="token_classify")):
        assert torch.tensor(out.data) == pytest.approx(torch.tensor(expected.data), abs=TOL)
    bad = texts[:engine_module.CHUNK] + [[5] * (bert.max_model_len + 1)]  # longer than the model takes
    stream = bert.stream_classify(bad)
    assert len(next(stream)) == engine_module.CHUNK
    with pytest.raises(ValueError):
        next(stream)


def test_a_big_request_keeps_only_a_few_chunks_tokenizing_ahead_of_its_reader(model_dirs, engine_factory):
    """The tokenizers are shared, first come first served: a stream that queued all of a 20k-text
    request's chunks at once would put every later request behind all of them."""
    from models import engine as engine_module

    engine = engine_factory(model_dirs["bert"])
    started = []
    start_chunk = engine._start_chunk

    def counting(prompts, args):  # the engine's own call, counted
        started.append(len(prompts))
        return start_chunk(prompts, args)

    engine._start_chunk = counting
    ahead = engine._tokenize_ahead()
    texts = _texts(engine_module.CHUNK * (ahead + 10), seed=11)
    stream = engine.stream_classify(texts)
    assert len(next(stream)) == engine_module.CHUNK
    assert len(started) == ahead + 1  # the one read, and `ahead` more
    assert sum(len(u) for u in stream) == len(texts) - engine_module.CHUNK  # the rest, in order, all there
    assert len(started) == ahead + 10


def test_interactive_work_on_an_idle_engine_runs_on_the_callers_thread_and_the_rest_goes_to_the_batcher():
    import threading

    seen = []

    class Runner:
        def __call__(self, batch):
            seen.append((threading.current_thread().name, batch.input_ids.shape[0]))
            n = batch.input_ids.shape[0]
            return torch.ones(n, 2), None

    batcher = Batcher(Runner(), torch.device("cpu"), max_batch_tokens=64, max_batch_seqs=8, max_wait_ms=0,
                      max_len=32)
    here = threading.current_thread().name
    try:
        ids = torch.arange(1, 7)
        out = batcher.submit(ids, [3, 3], token=False).result(timeout=10)
        assert out.shape == (2, 2) and seen == [(here, 2)]
        # A group submitted together (the scheduler's small jobs of one turn): one batch, here.
        group = batcher.submit_many([(ids, [3, 3], False, None, 0), (ids, [6], False, None, 0)])
        assert [f.result(timeout=10).shape for f in group] == [(2, 2), (1, 2)]
        assert seen[1:] == [(here, 3)]
        # Bulk work, and a group larger than a batch, go through the batcher's threads.
        bulk = batcher.submit_many([(ids, [3, 3], False, None, 1)])
        big = batcher.submit_many([(ids, [3, 3], False, None, 0)] * 5)
        assert [f.result(timeout=10).shape for f in bulk + big] == [(2, 2)] * 6
        # On a CPU the interactive lane has its own device thread; bulk work runs on the other.
        assert seen[2:] and {name for name, _ in seen[2:]} == {"poolq-device", "poolq-device-interactive"}
    finally:
        batcher.close()


def test_an_interactive_batch_runs_next_ahead_of_bulk_batches_already_collated():
    """With the device busy and bulk batches collated and waiting, an interactive request is
    the next batch the device runs: it waits for the running batch only (one device thread,
    as on a GPU)."""
    import threading

    release, running = threading.Event(), threading.Event()
    ran = []

    class Runner:
        def __call__(self, batch):
            ran.append(int(batch.input_ids[0, 0]))  # each request's ids start with its own marker
            running.set()
            release.wait(timeout=10)
            return torch.ones(batch.input_ids.shape[0], 2), None

    batcher = Batcher(Runner(), torch.device("cpu"), max_batch_tokens=8, max_batch_seqs=1, max_wait_ms=0,
                      max_len=8, interactive_thread=False)
    try:
        # Four bulk batches of one sequence each (marker 7), one running and the rest waiting.
        bulk = batcher.submit(torch.full((16,), 7), [4, 4, 4, 4], token=False, priority=1)
        assert running.wait(timeout=10)
        time.sleep(0.3)  # the collator fills the device's queue with the next bulk batches
        urgent = batcher.submit(torch.full((4,), 3), [4], token=False)
        time.sleep(0.2)  # the collator batches it meanwhile
        release.set()
        assert urgent.result(timeout=10).shape == (1, 2) and bulk.result(timeout=10).shape == (4, 2)
        assert ran == [7, 3, 7, 7, 7]
    finally:
        release.set()
        batcher.close()


def test_on_a_cpu_an_interactive_batch_runs_beside_the_running_bulk_batch():
    """A CPU's interactive lane has its own device thread: a one-text request does not wait
    for the bulk batch on the cores to end, and the bulk work still completes."""
    import threading

    release, running = threading.Event(), threading.Event()

    class Runner:
        def __call__(self, batch):
            if int(batch.input_ids[0, 0]) == 7:  # bulk: held until released
                running.set()
                release.wait(timeout=10)
            return torch.ones(batch.input_ids.shape[0], 2), None

    batcher = Batcher(Runner(), torch.device("cpu"), max_batch_tokens=8, max_batch_seqs=1, max_wait_ms=0,
                      max_len=8)
    try:
        bulk = batcher.submit(torch.full((16,), 7), [4, 4, 4, 4], token=False, priority=1)
        assert running.wait(timeout=10)
        urgent = batcher.submit(torch.full((4,), 3), [4], token=False)
        assert urgent.result(timeout=10).shape == (1, 2)
        assert not bulk.done()  # the bulk batch is still on the cores
        release.set()
        assert bulk.result(timeout=10).shape == (4, 2)
    finally:
        release.set()
        batcher.close()


def test_on_a_cpu_each_device_thread_hands_its_rows_back_itself():
    """No delivery thread on a CPU: there is no copy to wait for, and a hand-off per batch cost
    more than the delivery. Each request's future is settled on the device thread that ran it."""
    import threading

    release = threading.Event()

    class Runner:
        def __call__(self, batch):
            release.wait(10)
            return torch.ones(batch.input_ids.shape[0], 2), None

    batcher = Batcher(Runner(), torch.device("cpu"), max_batch_tokens=8, max_batch_seqs=1, max_wait_ms=0,
                      max_len=8)
    try:
        settled_on = {}
        futures = {"bulk": batcher.submit(torch.full((8,), 7), [4, 4], token=False, priority=1),
                   "interactive": batcher.submit(torch.full((4,), 7), [4], token=False)}
        for name, future in futures.items():
            future.add_done_callback(lambda _, name=name: settled_on.setdefault(name, threading.current_thread().name))
        release.set()
        assert [f.result(timeout=10).shape[0] for f in futures.values()] == [2, 1]
        assert settled_on == {"bulk": "poolq-device", "interactive": "poolq-device-interactive"}
        assert "poolq-deliver" not in {t.name for t in threading.enumerate()}
    finally:
        batcher.close()


def test_a_batcher_s_threads_carry_their_names_in_the_os():
    """What `top -H` and /proc show (bench/system.py reads the device threads' CPU there)."""
    import os

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("thread names in /proc are Linux's")

    class Runner:
        def __call__(self, batch):
            return torch.ones(batch.input_ids.shape[0], 2), None

    batcher = Batcher(Runner(), torch.device("cpu"), max_batch_tokens=8, max_batch_seqs=1, max_wait_ms=0,
                      max_len=8)
    try:
        batcher.submit(torch.full((8,), 7), [4, 4], token=False, priority=1).result(timeout=10)
        names = {}
        for thread in (batcher._collator, batcher._worker, batcher._interactive):
            with open(f"/proc/self/task/{thread.native_id}/comm") as comm:
                names[thread.name] = comm.read().strip()
        assert names == {"poolq-collator": "poolq-collator", "poolq-device": "poolq-device",
                         "poolq-device-interactive": "poolq-device-in"}
    finally:
        batcher.close()


def test_a_lone_request_of_equal_lengths_runs_unpadded_as_the_general_path_would(bert, ner, model_dirs,
                                                                                 engine_factory):
    # Several prompts of one length (token ids): the lone-request path takes them as the
    # batch as they are; a mixed engine cuts the same prompts into padded batches with others.
    prompts = [[101] + [2000 + i * 7 + j for j in range(10)] + [102] for i in range(6)]
    mixed = engine_factory(model_dirs["bert"], max_batch_tokens=64, max_batch_seqs=3)
    before = bert.batch_stats()["padded_tokens"]
    alone = [o.probs for o in bert.classify(prompts, use_activation=False)]
    assert bert.batch_stats()["padded_tokens"] - before == 6 * 12  # one unpadded batch
    together = [o.probs for o in mixed.classify(prompts + ["a longer text than the others, padded"],
                                                use_activation=False)][:6]
    assert torch.tensor(alone) == pytest.approx(torch.tensor(together), abs=TOL)

    ner_mixed = engine_factory(model_dirs["ner"], max_batch_tokens=64, max_batch_seqs=3)
    alone_tokens = [o.data for o in ner.encode(prompts, pooling_task="token_classify")]
    mixed_tokens = [o.data for o in ner_mixed.encode(prompts + ["padding company"], pooling_task="token_classify")][:6]
    assert len(alone_tokens) == 6 and all(len(a) == 12 for a in alone_tokens)
    for a, m in zip(alone_tokens, mixed_tokens):
        assert torch.tensor(a) == pytest.approx(torch.tensor(m), abs=TOL)


def test_an_unpadded_batch_skips_the_model_s_forward_only_where_that_gives_its_output(bert, qwen, cross_encoder,
                                                                                   model_dirs, engine_factory):
    from models.runner import direct_forward

    runner = bert._batcher.runner
    assert runner.direct is not None and runner.direct.masks  # BERT with SDPA: padded batches too
    assert cross_encoder._batcher.runner.direct is not None
    assert qwen._batcher.runner.direct is None  # no embeddings-then-encoder backbone
    # A backbone whose own forward gives something its pieces do not: the probe refuses it.
    shifted = copy.deepcopy(runner.backbone)

    def shift(_module, _inputs, out):
        out.last_hidden_state.add_(1.0)  # returns None: the output object stays the forward's

    shifted.register_forward_hook(shift)
    assert direct_forward(shifted, runner.uses_token_types) is None

    # A lone pair (token types, no padding: the direct call) scores as it does padded among others.
    mixed = engine_factory(model_dirs["ce"], max_batch_tokens=64, max_batch_seqs=2)
    query, doc = "where is the river stone", "the stone lies under the river in berlin"
    alone = cross_encoder.score(query, doc)[0].score
    together = mixed.score(query, [doc, "gamma", "a much longer document about alpha beta and delta"])[0].score
    assert alone == pytest.approx(together, abs=TOL)


def test_the_direct_call_runs_traced_only_where_the_trace_gives_the_eager_output(bert, cross_encoder):
    from models.runner import DirectBackbone, _probe, _traced

    runner = bert._batcher.runner
    # BERT: with and without padding, and with token type ids (pairs) or without (text prompts)
    assert set(runner.direct.traces) == {(False, False), (False, True), (True, False), (True, True)}
    assert set(cross_encoder._batcher.runner.direct.traces) == set(runner.direct.traces)
    used, traces, pooled = [], dict(runner.direct.traces), dict(runner.pooled)
    for key, traced in traces.items():
        runner.direct.traces[key] = lambda *args, key=key, traced=traced: used.append(key) or traced(*args)
    runner.pooled.clear()  # (classify batches run the whole pooled call traced: see the next test)
    try:
        bert.classify(["one text", "and a longer second one, so the first is padded"])  # one padded batch
        bert.classify(["one text alone"])
    finally:
        runner.direct.traces.update(traces)
        runner.pooled.update(pooled)
    assert used == [(False, True), (False, False)]  # text prompts (no type ids) run traced

    class WidthBranch(nn.Module):
        """A Python branch on the width: a trace keeps the side its own input took."""

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, hidden, attention_mask=None):
            out = self.encoder(hidden, attention_mask=attention_mask)[0]
            return (out * 2 if hidden.shape[1] > 8 else out,)

    direct = DirectBackbone(runner.direct.embeddings, WidthBranch(runner.direct.encoder))
    config, device = runner.backbone.config, next(runner.backbone.parameters()).device
    probes = [_probe(config, device, 2, 13, 9, runner.uses_token_types),
              _probe(config, device, 3, 5, 2, runner.uses_token_types)]
    assert _traced(direct, probes[:1], masked=False) is not None  # its own shape cannot show it
    assert _traced(direct, probes, masked=False) is None  # a narrower probe does: the eager call stays
    assert _traced(direct, probes, masked=True) is None


def test_a_batch_whose_rows_are_all_pooled_runs_as_one_traced_graph(bert, cross_encoder, ner, model_dirs,
                                                                  engine_factory):
    """Backbone, pooler and head as one graph (models.runner.pooled_traces), for every form the
    direct call has a trace of, giving the eager pieces' output; a head whose trace would not give
    its eager output is refused."""
    from models.runner import pooled_traces

    runner = bert._batcher.runner
    assert set(runner.pooled) == set(runner.direct.traces)
    assert set(cross_encoder._batcher.runner.pooled) == set(runner.pooled)
    assert ner._batcher.runner.pooled == {}  # a token classifier has no sequence head
    texts = ["one text", "and a longer second one, so the first is padded", "a third"]
    used, pooled = [], dict(runner.pooled)
    for key, traced in pooled.items():
        runner.pooled[key] = lambda *args, key=key, traced=traced: used.append(key) or traced(*args)
    try:
        traced_probs = [o.probs for o in bert.classify(texts)]
        bert.classify(["one text alone"])
    finally:
        runner.pooled.update(pooled)
    assert used == [(False, True), (False, False)]
    runner.pooled.clear()
    try:
        eager_head_probs = [o.probs for o in bert.classify(texts)]
    finally:
        runner.pooled.update(pooled)
    assert torch.tensor(traced_probs) == pytest.approx(torch.tensor(eager_head_probs), abs=TOL)
    # pairs (token type ids) too
    mixed = engine_factory(model_dirs["ce"], max_batch_tokens=64, max_batch_seqs=2)
    ce_runner = mixed._batcher.runner
    query, docs = "where is the river stone", ["the stone lies under the river in berlin", "gamma"]
    traced_scores = [s.score for s in mixed.score(query, docs)]
    ce_runner.pooled.clear()
    assert [s.score for s in mixed.score(query, docs)] == pytest.approx(traced_scores, abs=TOL)

    class RowCountBranch(nn.Module):
        """A Python branch on the row count: a trace keeps the side its own input took."""

        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, pooled):
            out = self.head(pooled)
            return out * 2 if pooled.shape[0] > 2 else out

    assert pooled_traces(runner.direct, runner.pooler, RowCountBranch(runner.heads.seq)) == {}
    assert pooled_traces(runner.direct, runner.pooler, None) == {}
