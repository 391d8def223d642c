"""Tokenizer helper processes: the same ids as the transformers tokenizer, the
same results and errors through the engine, and survival of a dead helper."""
from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from models import PoolingInputError
from models.engine import CHUNK
from models.tokenize_pool import IN_PROCESS_TEXTS, TokenizerPool, encode_plain

TOL = 1e-5


def _texts(n, seed=0, max_words=60):
    """Up to 60 words stays under the tiny models' 128 tokens."""
    rng = random.Random(seed)
    words = ["alpha", "Beta", "gamma,", "délta", "river", "stone!", "quickly", "under", "Berlin", "x", "漢字", "🙂"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def _byte_level_bpe() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE, trained here, to cover a second tokenizer family."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts(200, seed=9), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module", params=["wordpiece", "byte_level_bpe"])
def tokenizer_and_pool(request, model_dirs):
    tok = AutoTokenizer.from_pretrained(str(model_dirs["bert"])) if request.param == "wordpiece" else _byte_level_bpe()
    pool = TokenizerPool(tok, processes=2)
    yield tok, pool
    pool.close()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length,special", [(512, True), (20, True), (20, False), (3, True)])
def test_helpers_give_the_transformers_ids(tokenizer_and_pool, side, max_length, special):
    tok, pool = tokenizer_and_pool
    texts = _texts(60, seed=max_length, max_words=400)
    tok.truncation_side = side
    want = tok(texts, truncation=True, max_length=max_length, add_special_tokens=special)["input_ids"]
    flat, lengths = pool.submit(texts, max_length, side, special).result(30)
    assert flat.dtype == np.int32 and lengths.tolist() == [len(w) for w in want]
    assert [g.tolist() for g in np.split(flat, np.cumsum(lengths)[:-1])] == want
    assert pool.matches(tok, max_length, side)
    # The engine's in-process plain path: the same function on a copy of the backend.
    backend = copy.deepcopy(tok).backend_tokenizer
    flat, lengths = encode_plain(backend, texts, max_length, side, special)
    assert [g.tolist() for g in np.split(flat, np.cumsum(lengths)[:-1])] == want


@pytest.fixture(scope="module")
def pooled(model_dirs, engine_factory):
    engine = engine_factory(model_dirs["bert"], tokenizer_processes=2)
    assert engine.tokenizer_processes == 2  # the start-up check agreed with transformers
    return engine


def test_multi_chunk_request_equals_in_process_tokenization(pooled, bert):
    texts = _texts(CHUNK * 2 + 37, seed=4, max_words=150)  # three chunks: the helper path
    got = pooled.classify(texts, truncate_prompt_tokens=-1)
    want = bert.classify(texts, truncate_prompt_tokens=-1)
    assert [o.num_prompt_tokens for o in got] == [o.num_prompt_tokens for o in want]
    assert [o.label for o in got] == [o.label for o in want]
    assert torch.tensor([o.probs for o in got]) == pytest.approx(torch.tensor([o.probs for o in want]), abs=TOL)


@pytest.mark.parametrize("n", [CHUNK + 5, IN_PROCESS_TEXTS + 1])  # two chunks; one, still a helper's
@pytest.mark.parametrize("kwargs", [dict(truncate_prompt_tokens=10, truncation_side="left"),
                                    dict(truncate_prompt_tokens=10, add_special_tokens=False)])
def test_truncation_options_reach_the_helpers(pooled, bert, kwargs, n):
    texts = _texts(n, seed=6)
    got = pooled.classify(texts, use_activation=False, **kwargs)
    want = bert.classify(texts, use_activation=False, **kwargs)
    assert torch.tensor([o.probs for o in got]) == pytest.approx(torch.tensor([o.probs for o in want]), abs=TOL)


def test_mixed_text_and_token_id_prompts(pooled, bert):
    texts = _texts(CHUNK + 3, seed=7)
    prompts = texts[:CHUNK] + [[101, 7592, 102], texts[-1]]  # the second chunk stays in process
    got = pooled.classify(prompts)
    want = bert.classify(prompts)
    assert torch.tensor([o.probs for o in got]) == pytest.approx(torch.tensor([o.probs for o in want]), abs=TOL)


@pytest.mark.parametrize("bad,message", [("", "cannot be empty"), ("word " * 300, "maximum context length")])
def test_helper_path_errors_match_in_process(pooled, bert, bad, message):
    prompts = _texts(CHUNK + 10, seed=8)
    prompts[CHUNK + 3] = bad
    messages = []
    for engine in (pooled, bert):
        with pytest.raises(PoolingInputError, match=message) as err:
            engine.classify(prompts, add_special_tokens=bool(bad))
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_a_dead_helper_falls_back_to_in_process(model_dirs, engine_factory, bert):
    engine = engine_factory(model_dirs["bert"], tokenizer_processes=1)
    texts = _texts(CHUNK + 20, seed=11)
    for pid in list(engine._process_pool._executor._processes):
        os.kill(pid, signal.SIGKILL)
    got = engine.classify(texts)
    assert engine.tokenizer_processes == 0
    assert torch.tensor([o.probs for o in got]) == pytest.approx(
        torch.tensor([o.probs for o in bert.classify(texts)]), abs=TOL)


def test_one_chunk_goes_to_a_helper_unless_it_is_a_few_texts(model_dirs, engine_factory, bert):
    """A request of one chunk (a batch's piece of lines) is tokenized by a helper, off the
    engine's GIL; a few texts stay in process, where the word cache takes them. A killed
    helper shows which way each went: only the second request finds it dead."""
    engine = engine_factory(model_dirs["bert"], tokenizer_processes=1)
    for pid in list(engine._process_pool._executor._processes):
        os.kill(pid, signal.SIGKILL)
    few, more = _texts(IN_PROCESS_TEXTS, seed=12), _texts(IN_PROCESS_TEXTS + 1, seed=13)
    for texts, helpers in ((few, 1), (more, 0)):
        got = engine.classify(texts)
        assert engine.tokenizer_processes == helpers
        assert torch.tensor([o.probs for o in got]) == pytest.approx(
            torch.tensor([o.probs for o in bert.classify(texts)]), abs=TOL)


def test_helpers_exit_when_their_process_is_killed(model_dirs, tmp_path):
    """A worker SIGKILLed (the OOM killer, say) runs no shutdown; its helpers must not linger."""
    script = tmp_path / "holder.py"
    script.write_text(
        "import sys, time\n"
        "from transformers import AutoTokenizer\n"
        "from models.tokenize_pool import TokenizerPool\n"
        "if __name__ == '__main__':\n"
        f"    pool = TokenizerPool(AutoTokenizer.from_pretrained({str(model_dirs['bert'])!r}), processes=2)\n"
        "    print(*pool._executor._processes, flush=True)\n"
        "    time.sleep(600)\n")
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": root})
    try:
        helpers = [int(pid) for pid in holder.stdout.readline().split()]
        assert len(helpers) == 2 and all(_alive(pid) for pid in helpers)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in helpers)


def _alive(pid: int) -> bool:
    # A zombie is gone in all but name (its parent has not reaped it yet).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _ascii_texts(n, seed):
    """ASCII the twin takes (case, punctuation, digits, tabs and newlines), and ASCII it must
    leave to the normalizer (a control character, added tokens in any case)."""
    rng = random.Random(seed)
    words = ["Alpha", "BETA", "gamma,", "river.", "(stone)", "don't", "x2", "3.5e7", "a-b", "\t", "\r\n", "QuIcKlY",
             "[MASK]", "[cls]", "[Sep]", "bell\x07", "del\x7f", "~!@#$%^&*"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 300))) for _ in range(n)]


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("side,max_length,special", [("right", 512, True), ("left", 24, True), ("right", 24, False)])
def test_ascii_text_past_the_bert_normalizer_gives_the_transformers_ids(model_dirs, lowercase, side, max_length,
                                                                         special):
    from tokenizers import normalizers

    from models.tokenize_pool import ascii_twin

    tok = AutoTokenizer.from_pretrained(str(model_dirs["bert"]))
    tok.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)  # uncased and cased BERT
    texts = _ascii_texts(200, seed=max_length) + _texts(50, seed=3)  # and some that are not ASCII
    tok.truncation_side = side
    want = tok(texts, truncation=True, max_length=max_length, add_special_tokens=special)["input_ids"]
    backend = copy.deepcopy(tok.backend_tokenizer)
    assert ascii_twin(backend) is not None  # the path under test is taken
    for batch in (texts, texts[:200]):  # mixed, and all ASCII (many with added tokens, left to the normalizer)
        flat, lengths = encode_plain(backend, batch, max_length, side, special)
        got = [g.tolist() for g in np.split(flat, np.cumsum(lengths)[:-1])]
        assert got == want[:len(batch)]


def test_no_twin_for_a_tokenizer_without_bert_s_normalizer():
    from models.tokenize_pool import ascii_twin

    assert ascii_twin(_byte_level_bpe().backend_tokenizer) is None


def test_a_thread_s_first_tokenizer_is_a_spare_made_ahead_and_each_thread_has_its_own():
    import threading

    from models.inputs import ThreadTokenizers

    tokenizers = ThreadTokenizers(_byte_level_bpe())
    warmed = []
    tokenizers.make_spares(2, warm=warmed.append)
    assert len(warmed) == 2 and all(t is not tokenizers.base for t in warmed)
    got, sides = {}, {}

    def take(name):
        got[name] = tokenizers.get("left")
        sides[name] = got[name].truncation_side
        assert tokenizers.get() is got[name]  # the same copy on the thread's later calls

    threads = [threading.Thread(target=take, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
        t.join()
    spares = {id(t) for t in warmed}
    taken = [id(got[n]) for n in range(3)]
    assert set(taken[:2]) == spares  # the first two threads took the spares
    assert taken[2] not in spares and got[2] is not tokenizers.base  # the third made its own copy
    assert sides == {0: "left", 1: "left", 2: "left"}


def test_the_engine_turns_off_the_tokenizer_s_own_threads_unless_the_operator_set_them(model_dirs, engine_factory,
                                                                                       monkeypatch):
    """The engine's own threads tokenize a big request's chunks in parallel; the Rust
    tokenizer's thread pool inside each call is off, unless TOKENIZERS_PARALLELISM says otherwise."""
    import os

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    engine_factory(model_dirs["bert"])
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    engine_factory(model_dirs["bert"])
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_a_cpu_engine_leaves_its_forward_a_core_when_it_tokenizes_in_parallel(monkeypatch):
    """A CPU's forward is the pipeline's narrowest stage (one core per batch for a small model):
    the tokenizing threads take the other cores, and a GPU's feeder takes them all (up to four)."""
    import models.engine as engine_module

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for cores, on_cpu, on_gpu in ((1, 1, 1), (2, 1, 2), (3, 2, 3), (8, 4, 4), (64, 4, 4)):
        monkeypatch.setattr(engine_module, "usable_cores", lambda cores=cores: cores)
        assert (engine_module.tokenizing_threads(cpu), engine_module.tokenizing_threads(gpu)) == (on_cpu, on_gpu)


def test_the_engine_tokenizes_a_big_request_on_as_many_threads_as_it_says(model_dirs, engine_factory):
    import threading

    from models.engine import tokenizing_threads

    engine = engine_factory(model_dirs["bert"])
    assert engine.tokenizing_threads == tokenizing_threads(engine.device)
    before = {t.ident for t in threading.enumerate() if t.name.startswith("poolq-tokenize")}
    assert len(engine.classify(_texts(4 * CHUNK))) == 4 * CHUNK  # several chunks: the pool's threads
    used = [t for t in threading.enumerate() if t.name.startswith("poolq-tokenize") and t.ident not in before]
    assert 0 < len(used) <= engine.tokenizing_threads
