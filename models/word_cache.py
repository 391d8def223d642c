"""BERT's WordPiece a word at a time, from the words already seen.

BERT's pre-tokenizer splits text on whitespace (and then each punctuation
mark off on its own), and WordPiece encodes each piece alone: the ids of a
whitespace-separated word never depend on its neighbours. So the ids of a
text are its words' ids, one after the other, between the special tokens.
Text is mostly words a service has seen before, and looking a word up in a
dict costs less than the Rust tokenizer's walk over its characters: on the
bench's ~78-token texts ~23 us of CPU a text against ~100 (pre-tokenizing,
WordPiece and the encodings' Python objects). But all of it holds the GIL,
where the Rust call lets go of it: tokenize_pool decides who takes the cache
(in process only calls of a few texts; helper processes, and a cross-encoder's
pairs, every call).

Only for text the ASCII twin takes (models/tokenize_pool.py: printable ASCII
past BERT's normalizer, already lowered where it lowers): there Python's
`str.split()` splits on exactly the whitespace BERT's pre-tokenizer does.
A word not yet seen is encoded by the Rust tokenizer itself, without special
tokens or truncation, and kept, up to MAX_WORDS (then the cache starts over,
so text of ever new words, ids or hashes, costs what it did before and no
more memory). Truncation and the special tokens are applied to the joined
ids as the tokenizer applies them to a single text. The engine's start-up
agreement check (`tokenize_pool.agrees`) runs through this path too.

Shared by every copy of the same tokenizer (each thread and the ASCII twin
has its own copy): dict reads and writes are atomic under the GIL, and a
word's ids are the same whoever computes them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import chain
from typing import Any, Sequence

import numpy as np

MAX_WORDS = 1 << 17  # ~25 MB at most, for words of ~10 characters and one or two ids
MAX_WORD_CHARS = 48  # longer "words" (hashes, URLs, runs of punctuation) are not kept
FEW_TEXTS = 16  # up to this many texts are framed in lists, more with numpy


@dataclass(frozen=True)
class PairFrame:
    """A pair's special tokens and token types around its two texts: BERT's
    [CLS] A [SEP] B [SEP], types 0 up to the first [SEP] and 1 after it."""

    prefix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    first_type: int
    middle: tuple[int, ...]
    middle_types: tuple[int, ...]
    second_type: int
    suffix: tuple[int, ...]
    suffix_types: tuple[int, ...]

    def frame(self, first: list[int], second: list[int]) -> tuple[list[int], list[int]]:
        """One pair's ids and types (what the start-up check compares with the tokenizer's)."""
        return ([*self.prefix, *first, *self.middle, *second, *self.suffix],
                [*self.prefix_types, *[self.first_type] * len(first), *self.middle_types,
                 *[self.second_type] * len(second), *self.suffix_types])


class WordCache:
    def __init__(self, prefix: tuple[int, ...], suffix: tuple[int, ...], pair: PairFrame | None = None):
        self.prefix = prefix  # the special tokens before a single text's ids ([CLS])
        self.suffix = suffix  # and after them ([SEP])
        self.pair = pair  # and around a pair's two texts (cross-encoders), where found
        self._ids: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def encode(self, tok: Any, texts: Sequence[str], max_length: int, side: str,
               add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """Flat int32 ids and lengths of `texts` (already normalized), as `tok.encode_batch` gives them
        with this truncation; None where the special tokens leave no room (the tokenizer's own
        error is the caller's to raise). `tok` encodes the words not seen yet."""
        prefix, suffix = (self.prefix, self.suffix) if add_special_tokens else ((), ())
        room = max_length - len(prefix) - len(suffix)
        if room < 0:
            return None
        pieces, splits = self._pieces(tok, texts)
        if len(texts) <= FEW_TEXTS:
            return _framed_few(pieces, splits, room, side, prefix, suffix)
        return _framed(*_content(pieces, splits), room, side, prefix, suffix)

    def encode_pairs(self, tok: Any, firsts: Sequence[str], seconds: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Flat int32 ids and token types, and lengths, of the pairs (already normalized), as
        `tok.encode_batch` gives them with special tokens and no truncation; None without a
        pair frame."""
        frame = self.pair
        if frame is None:
            return None
        first, first_lengths = _content(*self._pieces(tok, firsts))
        second, second_lengths = _content(*self._pieces(tok, seconds))
        lengths = first_lengths + second_lengths + len(frame.prefix) + len(frame.middle) + len(frame.suffix)
        ids = np.empty(int(lengths.sum()), dtype=np.int32)
        types = np.empty_like(ids)
        at = np.cumsum(lengths) - lengths  # where each pair's next part begins
        at = _put_specials(ids, types, at, frame.prefix, frame.prefix_types)
        at = put_texts(ids, types, at, first, first_lengths, frame.first_type)
        at = _put_specials(ids, types, at, frame.middle, frame.middle_types)
        at = put_texts(ids, types, at, second, second_lengths, frame.second_type)
        _put_specials(ids, types, at, frame.suffix, frame.suffix_types)
        return ids, types, lengths

    def _pieces(self, tok: Any, texts: Sequence[str]) -> tuple[list, list[list[str]]]:
        """Each word's ids (in text order), and each text's words."""
        splits = [text.split() for text in texts]
        words = list(chain.from_iterable(splits))
        pieces = list(map(self._ids.get, words))
        if None in pieces:
            new = self._learn(tok, {w for w, p in zip(words, pieces) if p is None})
            pieces = [p if p is not None else new[w] for w, p in zip(words, pieces)]
        return pieces, splits

    def _learn(self, tok: Any, words: set[str]) -> dict[str, tuple[int, ...]]:
        """The ids of words not seen yet, kept for next time (the short ones)."""
        new_words = list(words)
        tok.no_truncation()  # callers set their own truncation before each call
        tok.no_padding()
        new = dict(zip(new_words, _each_word_ids(tok, new_words)))
        if len(self._ids) + len(new) > MAX_WORDS:
            self._ids.clear()
        self._ids.update((w, ids) for w, ids in new.items() if len(w) <= MAX_WORD_CHARS)
        return new


def _each_word_ids(tok: Any, words: list[str]) -> list[tuple[int, ...]]:
    """Each word's ids, from ONE encoding of the words a space apart: a word's ids do not depend
    on its neighbours (the module's docstring), and each token belongs to the word its offsets
    start in. An encoding a word cost ~4 us a word in the Rust call and its Python objects, one
    for all ~2 (60 new words: 135 us against 250), and a small job of new text pays it per text."""
    if len(words) == 1:
        return [tuple(tok.encode(words[0], add_special_tokens=False).ids)]
    encoding = tok.encode(" ".join(words), add_special_tokens=False)
    spans = np.fromiter(map(len, words), dtype=np.int64, count=len(words)) + 1  # a word and its space
    starts = np.cumsum(spans) - spans
    owner = np.searchsorted(starts, [start for start, _ in encoding.offsets], side="right") - 1
    bounds = np.searchsorted(owner, np.arange(len(words) + 1)).tolist()
    ids = encoding.ids
    return [tuple(ids[b:e]) for b, e in zip(bounds, bounds[1:])]


def _framed_few(pieces: list, splits: list[list[str]], room: int, side: str, prefix: tuple[int, ...],
                suffix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """`_framed` for a few texts, in lists: a dozen numpy calls cost more than one text's lookups."""
    rows, start = [], 0
    for words in splits:
        content = list(chain.from_iterable(pieces[start:start + len(words)]))
        start += len(words)
        if len(content) > room:
            content = content[:room] if side != "left" else content[len(content) - room:]
        rows.append([*prefix, *content, *suffix])
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    return np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum())), lengths


def _put_specials(ids: np.ndarray, types: np.ndarray | None, at: np.ndarray, tokens: tuple[int, ...],
                  kinds: tuple[int, ...] = ()) -> np.ndarray:
    """The same special tokens (of token types `kinds`, where `types` is kept) at each text's or
    pair's `at`; returns where each one's next part begins."""
    for offset, token in enumerate(tokens):
        ids[at + offset] = token
        if types is not None:
            types[at + offset] = kinds[offset]
    return at + len(tokens)


def put_texts(ids: np.ndarray, types: np.ndarray | None, at: np.ndarray, content: np.ndarray,
               lengths: np.ndarray, kind: int = 0) -> np.ndarray:
    """Each text's ids (`lengths` of them from `content`, in order) at its `at`."""
    where = np.arange(len(content)) + np.repeat(at - (np.cumsum(lengths) - lengths), lengths)
    ids[where] = content
    if types is not None:
        types[where] = kind
    return at + lengths


def _content(pieces: list, splits: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' ids back to back, and how many each text has."""
    per_word = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    content = np.fromiter(chain.from_iterable(pieces), dtype=np.int32, count=int(per_word.sum()))
    return content, _per_text(per_word, splits)


def _per_text(per_word: np.ndarray, splits: list[list[str]]) -> np.ndarray:
    """Ids per text, from ids per word and the words of each text."""
    words_per_text = np.fromiter(map(len, splits), dtype=np.int64, count=len(splits))
    bounds = np.zeros(len(per_word) + 1, dtype=np.int64)
    np.cumsum(per_word, out=bounds[1:])
    ends = np.cumsum(words_per_text)
    return bounds[ends] - bounds[ends - words_per_text]


def _framed(content: np.ndarray, lengths: np.ndarray, room: int, side: str, prefix: tuple[int, ...],
            suffix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Each text's ids cut to `room` on `side`, between the special tokens: flat ids and lengths."""
    if (lengths > room).any():
        # Position of each id within its text; keep the first `room` (right) or the last (left).
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.arange(len(content)) - starts
        if side == "left":
            position = np.repeat(lengths, lengths) - 1 - position
        content = content[position < room]
        lengths = np.minimum(lengths, room)
    out_lengths = (lengths + len(prefix) + len(suffix)).astype(np.int32)
    if not prefix and not suffix:
        return content, out_lengths
    out = np.empty(int(out_lengths.sum()), dtype=np.int32)
    at = np.cumsum(out_lengths) - out_lengths
    at = _put_specials(out, None, at, prefix)
    at = put_texts(out, None, at, content, lengths)
    _put_specials(out, None, at, suffix)
    return out, out_lengths


_caches: dict[str, WordCache | None] = {}
_caches_lock = threading.Lock()


def word_cache(config: dict, tok: Any) -> WordCache | None:
    """The cache for this tokenizer (`config`: its JSON, parsed), shared by its copies whatever
    their truncation; None unless it is BERT's pre-tokenizer and WordPiece, with special tokens
    around a single text. Leaves `tok` without truncation or padding."""
    tok.no_truncation()
    tok.no_padding()
    key = tok.to_str()
    with _caches_lock:
        if key not in _caches:
            _caches[key] = _new(config, tok)
        return _caches[key]


def _new(config: dict, tok: Any) -> WordCache | None:
    if (config.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        return None
    if (config.get("model") or {}).get("type") != "WordPiece":
        return None
    plain = tok.encode("a", add_special_tokens=False).ids
    framed = tok.encode("a", add_special_tokens=True).ids
    for start in range(len(framed) - len(plain) + 1):
        if framed[start:start + len(plain)] == plain:
            cache = WordCache(tuple(framed[:start]), tuple(framed[start + len(plain):]), _pair_frame(tok, plain))
            # The same frame around two words: no template that differs with the text's length.
            both = tok.encode("a a", add_special_tokens=True).ids
            return cache if both == [*cache.prefix, *plain, *plain, *cache.suffix] else None
    return None


def _pair_frame(tok: Any, plain: list[int]) -> PairFrame | None:
    """Where the tokenizer puts a pair's special tokens, read off the pair ("a", "a") and checked
    on texts of other lengths; None for a frame this cannot express."""
    if len(plain) != 1:
        return None
    encoding = tok.encode("a", "a", add_special_tokens=True)
    ids, types = encoding.ids, encoding.type_ids
    where = [i for i, token in enumerate(ids) if token == plain[0]]
    if len(where) != 2:
        return None
    first, second = where
    frame = PairFrame(tuple(ids[:first]), tuple(types[:first]), types[first],
                      tuple(ids[first + 1:second]), tuple(types[first + 1:second]), types[second],
                      tuple(ids[second + 1:]), tuple(types[second + 1:]))
    check = tok.encode("a a", "a a a", add_special_tokens=True)
    return frame if (check.ids, check.type_ids) == frame.frame(plain * 2, plain * 3) else None


__all__ = ["PairFrame", "WordCache", "word_cache", "MAX_WORDS", "MAX_WORD_CHARS"]
