"""Engine benchmark: text -> probabilities in process, next to the reference scripts.

Runs ../shared/bench/raw_ceiling.py and user_baselines.py as subprocesses with
the same N in the same invocation, then times PoolingEngine.classify on the
same texts (same generator and seed as user_baselines.py) for the MiniLM-L6
and bert-base shapes (random weights, real BERT tokenizer), and prints seqs/s,
tokens/s, pad fraction and the ratios engine / raw ceiling (sorted, token
budget) and engine / transformers pipeline.

    OUT=/tmp/bench N=200 python bench/engine.py          # CPU, small N
    python bench/engine.py                               # GPU: N=20000
It also times the engine's host path alone (the same texts with a forward
that returns zeros: tokenizing, batching, collating, delivering), which says
whether the host or the device bounds the engine on this machine.

Env: N, OUT (default /tmp), POOLQ_BENCH_REF (folder of the reference scripts),
SKIP_REFERENCE=1 (reuse the JSON files already in OUT), TOKENIZER_PROCESSES
(default: the engine's own choice for the device), BASELINE_N (texts for
user_baselines.py, default N: its figures are rates, and the token-
classification pipeline alone takes minutes at N=20000 on a GPU),
BUDGETS (extra batch limits to time, e.g. `32768:512,65536:1024`, as
max_batch_tokens:max_batch_seqs, beside the engine's defaults).
"""
from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification  # noqa: E402

from models import PoolingEngine  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
N = int(os.environ.get("N", "20000" if DEV == "cuda" else "200"))
OUT = pathlib.Path(os.environ.get("OUT", "/tmp"))
HOST_N = 16384
SHAPES = {
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def reference_dir() -> pathlib.Path:
    candidates = [os.environ.get("POOLQ_BENCH_REF"), ROOT / "shared" / "bench", ROOT.parent / "shared" / "bench",
                  "/work/shared/bench"]
    for c in candidates:
        if c and (pathlib.Path(c) / "raw_ceiling.py").is_file():
            return pathlib.Path(c)
    raise SystemExit(f"reference scripts not found in {candidates}; set POOLQ_BENCH_REF")


def texts_like_user_baselines(ref: pathlib.Path, n: int) -> list[str]:
    """The exact texts user_baselines.py generates (same seed, same draws)."""
    random.seed(0)
    words = [w for w in open(ref / "tok" / "vocab.txt").read().split() if w.isalpha() and len(w) > 2]
    n_words = [int(min(400, max(4, random.lognormvariate(4.1, 0.7)))) for _ in range(n)]
    return [" ".join(random.choice(words) for _ in range(k)) for k in n_words]


BASELINE_N = int(os.environ.get("BASELINE_N", N))
BUDGETS = [tuple(int(x) for x in b.split(":")) for b in os.environ.get("BUDGETS", "").split(",") if b]


def run_reference(ref: pathlib.Path) -> dict:
    out = {}
    for script, n in (("raw_ceiling.py", N), ("user_baselines.py", BASELINE_N)):
        target = OUT / script.replace(".py", ".json")
        if not os.environ.get("SKIP_REFERENCE"):
            print(f"# running {script} N={n}", flush=True)
            env = {**os.environ, "N": str(n), "OUT": str(OUT)}
            subprocess.run([sys.executable, str(ref / script)], check=True, env=env)
        out[script] = json.loads(target.read_text())
    return out


def time_engine(engine: PoolingEngine, texts: list[str], threads: int) -> dict:
    """Wall time for all texts; with threads > 1, callers submit chunks concurrently
    (like a worker's task threads)."""
    before = engine.batch_stats()
    chunks = [texts[i::threads] for i in range(threads)]
    tokens = [0] * threads

    def call(i):
        tokens[i] = sum(o.num_prompt_tokens for o in engine.classify(chunks[i]))

    if DEV == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    after = engine.batch_stats()
    real = after["real_tokens"] - before["real_tokens"]
    padded = after["padded_tokens"] - before["padded_tokens"]
    return dict(threads=threads, seconds=round(seconds, 3), seqs_per_s=round(len(texts) / seconds),
                tokens_per_s=round(sum(tokens) / seconds), pad_fraction=round(1 - real / max(padded, 1), 3),
                batches=after["batches"] - before["batches"])


def bench_shape(name: str, shape: dict, ref: pathlib.Path, texts: list[str]) -> dict:
    tok = AutoTokenizer.from_pretrained(str(ref / "tok"))
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=tok.vocab_size, num_labels=2, **shape)
        BertForSequenceClassification(cfg).save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
        processes = os.environ.get("TOKENIZER_PROCESSES")
        engine = PoolingEngine(d, max_model_len=512, tokenizer_processes=int(processes) if processes else None)
        try:
            engine.classify(texts[:2048])  # warm-up: first shapes, allocator, tokenizer copies and helpers
            runs = [time_engine(engine, texts, t) for t in (1, 8)]
            batcher = engine._batcher
            defaults = (batcher.max_tokens, batcher.max_seqs)
            for tokens, seqs in BUDGETS:  # other batch limits on the same engine
                batcher.set_limits(tokens, seqs)
                engine.classify(texts[:2048])  # the new shapes' first runs
                runs.append({"max_batch_tokens": tokens, "max_batch_seqs": seqs, **time_engine(engine, texts, 8)})
            batcher.set_limits(*defaults)
            # Host path alone: the batcher's runner swapped for one that only
            # allocates the output, so every other step runs as in production.
            # At least HOST_N texts (repeating them), or a small CPU-sized N
            # measures only the fixed cost of a call.
            engine._batcher.runner = lambda batch: (torch.zeros(batch.lengths.shape[0], 2), None)
            host = time_engine(engine, (texts * -(-HOST_N // len(texts)))[:max(HOST_N, len(texts))], 8)
        finally:
            engine.close()
    best = max(runs[:2], key=lambda r: r["seqs_per_s"])  # the engine's own defaults
    return dict(runs=runs, best=best, best_of_all=max(runs, key=lambda r: r["seqs_per_s"]), host_path=host,
                tokenizer_processes=engine.tokenizer_processes, device=str(engine.device), dtype=str(engine.dtype))


def ratios(name: str, engine: dict, reference: dict) -> dict:
    raw = reference["raw_ceiling.py"][f"{name}/seq"]
    sorted_best = max((v for k, v in raw.items() if k.startswith("sorted_token_budget")),
                      key=lambda v: v["seqs_per_s"])
    users = reference["user_baselines.py"][name]
    seqs = engine["best"]["seqs_per_s"]
    return dict(engine_seqs_per_s=seqs, engine_tokens_per_s=engine["best"]["tokens_per_s"],
                host_path_seqs_per_s=engine["host_path"]["seqs_per_s"],
                engine_pad_fraction=engine["best"]["pad_fraction"],
                raw_sorted_seqs_per_s=sorted_best["seqs_per_s"], raw_naive_seqs_per_s=raw["naive_bs32_arrival_order"]["seqs_per_s"],
                pipeline_seqs_per_s=users["hf_pipeline_classify_bs32"]["seqs_per_s"],
                tuned_loop_seqs_per_s=users["tuned_sorted_budget64k"]["seqs_per_s"],
                engine_over_raw_sorted=round(seqs / sorted_best["seqs_per_s"], 3),
                engine_over_pipeline=round(seqs / users["hf_pipeline_classify_bs32"]["seqs_per_s"], 2),
                engine_over_tuned_loop=round(seqs / users["tuned_sorted_budget64k"]["seqs_per_s"], 2))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ref = reference_dir()
    reference = run_reference(ref)
    texts = texts_like_user_baselines(ref, N)
    report = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "N": N,
              "torch": torch.__version__, "cpus": os.cpu_count(), "shapes": {}}
    for name, shape in SHAPES.items():
        result = bench_shape(name, shape, ref, texts)
        result["ratios"] = ratios(name, result, reference)
        report["shapes"][name] = result
        print(name, json.dumps(result), flush=True)
    (OUT / "engine.json").write_text(json.dumps(report, indent=1))
    print(f"\n| shape | engine seqs/s | tokens/s | pad | raw sorted seqs/s | engine/raw sorted | "
          f"pipeline seqs/s | engine/pipeline | engine/tuned loop | host path seqs/s | tokenizer processes |\n"
          f"|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in report["shapes"].items():
        q = r["ratios"]
        print(f"| {name} | {q['engine_seqs_per_s']} | {q['engine_tokens_per_s']} | {q['engine_pad_fraction']} | "
              f"{q['raw_sorted_seqs_per_s']} | {q['engine_over_raw_sorted']} | {q['pipeline_seqs_per_s']} | "
              f"{q['engine_over_pipeline']} | {q['engine_over_tuned_loop']} | {q['host_path_seqs_per_s']} | "
              f"{r['tokenizer_processes']} |")
    for name, r in report["shapes"].items():
        raw = r["ratios"]["raw_sorted_seqs_per_s"]
        for run in r["runs"][2:]:
            print(f"{name}: max_batch_tokens={run['max_batch_tokens']} max_batch_seqs={run['max_batch_seqs']}: "
                  f"{run['seqs_per_s']} seqs/s, pad {run['pad_fraction']}, {run['seqs_per_s'] / raw:.3f} of raw sorted")


if __name__ == "__main__":
    main()
