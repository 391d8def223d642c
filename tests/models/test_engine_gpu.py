"""The engine on a GPU: its defaults (bf16, tokenizer helpers), every task close
to fp32 on the CPU, batching invariance in fp32 on the device, concurrent
callers, and a real CUDA out-of-memory error split and retried.

Skipped without CUDA. `POOLQ_TEST_ACCELERATOR=cpu` runs them on the CPU
instead (fp32, no helpers), which checks the tests themselves on a machine
without a GPU; the CUDA-only test stays skipped there.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from engine_cases import TEXTS, classify_concurrently
from models.engine import CHUNK, default_tokenizer_processes

ACCEL = os.environ.get("POOLQ_TEST_ACCELERATOR") or ("cuda" if torch.cuda.is_available() else None)
ON_GPU = ACCEL == "cuda"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(ACCEL is None, reason="needs a CUDA device")]

# bf16 keeps 8 bits of mantissa (~0.4% per rounding); through two tiny layers
# and a softmax the probabilities stay within a few hundredths of fp32's.
BF16 = 3e-2
FP32 = 1e-4


def _texts(n, seed=0, max_words=60):
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "quickly", "under", "berlin", "x"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def _close(got, want, tol):
    assert torch.tensor(got) == pytest.approx(torch.tensor(want), abs=tol, rel=tol)


@pytest.fixture(scope="module")
def on_accel(model_dirs, engine_factory):
    """Engines on the accelerator with its default dtype, one per model, built on first use."""
    engines = {}

    def get(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in engines:
            engines[key] = engine_factory(model_dirs[name], device=ACCEL, dtype="auto", **kwargs)
        return engines[key]

    return get


def test_defaults_on_the_accelerator(on_accel):
    engine = on_accel("bert")
    assert engine.device.type == ACCEL
    assert engine.dtype == (torch.bfloat16 if ON_GPU else torch.float32)
    assert engine.tokenizer_processes == default_tokenizer_processes(engine.device)


@pytest.mark.parametrize("name", ["bert", "bert_multi", "bert_reg", "qwen"])
def test_classify_close_to_cpu_fp32(request, model_dirs, engine_factory, on_accel, name):
    cpu = engine_factory(model_dirs[name], device="cpu", dtype="float32")
    texts = TEXTS + _texts(30, seed=1)
    for use_activation in (None, False):
        got = [o.probs for o in on_accel(name).classify(texts, use_activation=use_activation)]
        want = [o.probs for o in cpu.classify(texts, use_activation=use_activation)]
        _close(got, want, BF16)


def test_token_classify_close_to_cpu_fp32(model_dirs, engine_factory, on_accel):
    cpu = engine_factory(model_dirs["ner"], device="cpu", dtype="float32")
    texts = TEXTS + _texts(10, seed=2)
    got = on_accel("ner").encode(texts, pooling_task="token_classify")
    want = cpu.encode(texts, pooling_task="token_classify")
    for g, w in zip(got, want):
        _close(g.data, w.data, BF16)
    grouped = on_accel("ner").encode(TEXTS[3], pooling_task="token_classify", aggregation="simple")[0]
    assert grouped.entities and all(e["end"] > e["start"] for e in grouped.entities)


def test_score_close_to_cpu_fp32(model_dirs, engine_factory, on_accel):
    cpu = engine_factory(model_dirs["ce"], device="cpu", dtype="float32")
    query, docs = "what is the capital of france", TEXTS
    _close([o.score for o in on_accel("ce").score(query, docs)], [o.score for o in cpu.score(query, docs)], BF16)


def test_converted_reranker_close_to_cpu_fp32(model_dirs, engine_factory):
    overrides = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
                 "is_original_qwen3_reranker": True}
    gpu = engine_factory(model_dirs["lm"], device=ACCEL, dtype="auto", hf_overrides=overrides)
    cpu = engine_factory(model_dirs["lm"], device="cpu", dtype="float32", hf_overrides=overrides)
    query, docs = "what is the capital of france", TEXTS
    _close([o.score for o in gpu.score(query, docs)], [o.score for o in cpu.score(query, docs)], BF16)


def test_large_request_through_helpers_matches_cpu(model_dirs, engine_factory, on_accel):
    cpu = engine_factory(model_dirs["bert"], device="cpu", dtype="float32")
    texts = _texts(CHUNK * 3 + 1, seed=12)  # several chunks: tokenized by the helpers on a GPU
    _close([o.probs for o in on_accel("bert").classify(texts)], [o.probs for o in cpu.classify(texts)], BF16)


@pytest.mark.parametrize("name", ["bert", "qwen"])
def test_fp32_on_the_device_is_invariant_to_batching(model_dirs, engine_factory, name):
    alone = engine_factory(model_dirs[name], device=ACCEL, dtype="float32")
    # A tiny budget cuts the mixed run into many batches of varied shapes,
    # several of them in flight on the device at once.
    mixed = engine_factory(model_dirs[name], device=ACCEL, dtype="float32", max_batch_tokens=256, max_batch_seqs=5)
    texts = _texts(60, seed=3)
    singles = [alone.classify(t, use_activation=False)[0].probs for t in texts]
    together = [o.probs for o in mixed.classify(texts, use_activation=False)]
    _close(together, singles, FP32)


def test_concurrent_callers_get_their_own_results(model_dirs, engine_factory, on_accel):
    cpu = engine_factory(model_dirs["bert"], device="cpu", dtype="float32")
    engine = on_accel("bert")
    jobs = [_texts(random.Random(i).randint(1, 40), seed=100 + i) for i in range(32)]
    results = classify_concurrently(engine, jobs)
    for i, job in enumerate(jobs):
        _close(results[i], [o.probs for o in cpu.classify(job)], BF16)


@pytest.mark.skipif(not ON_GPU, reason="a CUDA out-of-memory error needs CUDA")
def test_cuda_out_of_memory_splits_the_batch_and_retries(model_dirs, engine_factory):
    engine = engine_factory(model_dirs["bert"], device="cuda", dtype="auto", max_wait_ms=200)
    texts = _texts(8, seed=4)
    want = [o.probs for o in engine.classify(texts)]
    real, total = engine._batcher.runner, torch.cuda.get_device_properties(0).total_memory
    sizes = []

    def greedy(batch):
        rows = batch.input_ids.shape[0]
        sizes.append(rows)
        if rows > 2:
            # More than the device holds: the CUDA caching allocator's own OutOfMemoryError.
            torch.empty(rows * total // 2, dtype=torch.uint8, device="cuda")
        return real(batch)

    engine._batcher.runner = greedy
    try:
        got = [o.probs for o in engine.classify(texts)]
    finally:
        engine._batcher.runner = real
    assert sizes[0] == 8 and max(sizes[1:]) <= 4 and 2 in sizes
    _close(got, want, BF16)
    assert torch.cuda.memory_allocated() < total // 4  # nothing of the failed attempts is held
