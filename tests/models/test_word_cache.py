"""BERT's WordPiece a word at a time from a cache (models/word_cache.py): the transformers
tokenizer's ids, cold and warm, at every truncation; bounded; one cache per tokenizer."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from transformers import AutoTokenizer

from models import word_cache
from models.tokenize_pool import ascii_twin, encode_plain


def _texts(n, seed):
    """ASCII the twin takes: punctuation inside and around words, digits, runs of whitespace,
    words past WordPiece's 100 characters and past the cache's, empty and blank texts."""
    rng = random.Random(seed)
    words = ["river", "Stone", "quickly,", "(under)", "don't", "3.5e7", "a-b-c", "x", "--", "?!", "\t", "\n\n", "  ",
             "unbelievably", "Tokenization's", "q" * 60, "w" * 120, "ab." * 30, "ünï"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 200))) for _ in range(n)]
    return texts + ["", "   ", "\t\n", "one"]


def _split(flat, lengths):
    return [part.tolist() for part in np.split(flat, np.cumsum(lengths)[:-1])]


@pytest.fixture()
def bert(model_dirs):
    return AutoTokenizer.from_pretrained(str(model_dirs["bert"]))


@pytest.fixture()
def any_size(monkeypatch):
    """The cache for calls of any size, as in a tokenizer helper process."""
    from models import tokenize_pool

    monkeypatch.setattr(tokenize_pool, "_cache_texts", None)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length,special", [(513, True), (24, True), (24, False), (2, True), (1, False)])
def test_cached_words_give_the_transformers_ids_cold_and_warm(bert, any_size, side, max_length, special):
    texts = _texts(150, seed=max_length)
    bert.truncation_side = side
    backend = copy.deepcopy(bert.backend_tokenizer)
    twin = ascii_twin(backend)
    assert twin is not None and twin.words is not None  # the path under test is taken
    ascii_only = [t for t in texts if t.isascii()]
    for batch in (texts, texts, ascii_only, ascii_only[:1]):  # mixed, cold then warm; all ASCII; one text
        want = bert(batch, truncation=True, max_length=max_length, add_special_tokens=special)["input_ids"]
        assert _split(*encode_plain(backend, batch, max_length, side, special)) == want
    assert all(len(word) <= word_cache.MAX_WORD_CHARS for word in twin.words._ids)


def test_the_cache_starts_over_when_full_and_still_gives_the_same_ids(bert, any_size, monkeypatch):
    monkeypatch.setattr(word_cache, "MAX_WORDS", 50)
    monkeypatch.setattr(word_cache, "_caches", {})  # not the one the other tests filled
    texts = [t for t in _texts(80, seed=5) if t.isascii()]
    want = bert(texts, truncation=True, max_length=513)["input_ids"]
    backend = copy.deepcopy(bert.backend_tokenizer)
    cache = ascii_twin(backend).words
    for start in range(0, len(texts), 7):
        assert _split(*encode_plain(backend, texts[start:start + 7], 513, "right", True)) == want[start:start + 7]
        assert 0 < len(cache) <= 50


def test_in_process_only_a_few_texts_take_the_cache(bert, monkeypatch):
    """A big call holds the GIL for its whole length from the cache; the Rust tokenizer lets go."""
    from models import tokenize_pool

    monkeypatch.setattr(word_cache, "_caches", {})
    backend = copy.deepcopy(bert.backend_tokenizer)
    cache = ascii_twin(backend).words
    encode_plain(backend, ["many texts"] * (tokenize_pool._cache_texts + 1), 513, "right", True)
    assert len(cache) == 0
    want = bert(["a few texts"], truncation=True, max_length=513)["input_ids"]
    assert _split(*encode_plain(backend, ["a few texts"], 513, "right", True)) == want
    assert len(cache) == 3


def test_copies_of_a_tokenizer_share_one_cache_whatever_their_truncation(bert):
    first, second = copy.deepcopy(bert.backend_tokenizer), copy.deepcopy(bert.backend_tokenizer)
    first.enable_truncation(7)
    second.enable_truncation(300, direction="left")
    assert ascii_twin(first).words is ascii_twin(second).words is not None


def test_no_cache_for_wordpiece_behind_another_pre_tokenizer(bert):
    from tokenizers import pre_tokenizers

    backend = copy.deepcopy(bert.backend_tokenizer)
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # punctuation stays on its word
    twin = ascii_twin(backend)
    assert twin is not None and twin.words is None
    texts = ["don't stop, (ever)", "plain words only"]
    backend.no_padding()
    want = [e.ids for e in backend.encode_batch(texts)]
    assert _split(*encode_plain(backend, texts, 513, "right", True)) == want


def _pairs(n, seed):
    rng = random.Random(seed)
    words = ["what", "Is", "poolq?", "river,", "(stone)", "don't", "3.5e7", "a-b", "\t", "  ", "QuIcKlY", "xyz" * 4]

    def text(most):
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, most)))

    return [text(6) for _ in range(n)], [text(16) for _ in range(n)]  # within the tiny models' 128 tokens


def test_pairs_through_the_cache_give_the_transformers_ids_and_types(model_dirs):
    from models.tokenize_pool import encode_pairs_plain

    tok = AutoTokenizer.from_pretrained(str(model_dirs["ce"]))
    backend = copy.deepcopy(tok.backend_tokenizer)
    firsts, seconds = _pairs(120, seed=1)
    want = tok(firsts, seconds, truncation=True, max_length=513, return_token_type_ids=True)
    for _ in range(2):  # cold, then warm
        got = encode_pairs_plain(backend, firsts, seconds, 513)
        assert got == list(zip(want["input_ids"], want["token_type_ids"]))
    longest = max(map(len, want["input_ids"]))
    got = encode_pairs_plain(backend, firsts, seconds, longest - 1)  # truncating is the tokenizer's
    assert [pair is None for pair in got] == [len(ids) == longest for ids in want["input_ids"]]
    assert encode_pairs_plain(backend, ["über", "ok"], ["alles", "fine"], 513)[0] is None  # not ASCII: the usual path


def test_the_engine_scores_pairs_through_the_cache_as_through_transformers(cross_encoder):
    assert cross_encoder._pairs_in_process  # the path under test is taken
    firsts, seconds = _pairs(40, seed=2)
    # 1:N, N:N, and some pairs the transformers call takes: one not ASCII, one to truncate
    cases = [(firsts[0], seconds, {}), (firsts, seconds, {}), (firsts[0], seconds + ["ünïcode doc"], {}),
             (firsts[0], seconds[:3] + ["long " * 200], {"truncate_prompt_tokens": -1})]
    fast = [cross_encoder.score(a, b, **kwargs) for a, b, kwargs in cases]
    cross_encoder._pairs_in_process = False
    try:
        usual = [cross_encoder.score(a, b, **kwargs) for a, b, kwargs in cases]
    finally:
        cross_encoder._pairs_in_process = True
    for got, want in zip(fast, usual):
        assert [o.num_prompt_tokens for o in got] == [o.num_prompt_tokens for o in want]
        assert [o.score for o in got] == pytest.approx([o.score for o in want], abs=1e-6)


def test_words_learned_in_one_encoding_get_the_ids_each_gets_alone(bert):
    """New words are encoded a space apart in one call; each token goes to the word its
    offsets start in. Printable ASCII of every kind: punctuation inside and around words,
    pieces past WordPiece's 100 characters ([UNK]), one-character words."""
    import string

    rng = random.Random(3)
    backend = copy.deepcopy(bert.backend_tokenizer)
    backend.no_truncation()
    backend.no_padding()
    chars = string.ascii_letters + string.digits + string.punctuation
    for _ in range(20):
        words = sorted({"".join(rng.choice(chars) for _ in range(rng.choice([1, 2, 7, 30, 101, 140])))
                        for _ in range(40)})
        alone = [tuple(e.ids) for e in backend.encode_batch(words, add_special_tokens=False)]
        assert word_cache._each_word_ids(backend, words) == alone
    assert word_cache._each_word_ids(backend, ["don't"]) == [tuple(backend.encode("don't", add_special_tokens=False).ids)]
