"""Cross-encoder prompts for score / rerank (vLLM §1.5, §3.3).

Pairs are 1:1, 1:N (the query is repeated) or N:N (zipped). An explicit score
template wins; otherwise BERT-style models use the tokenizer's pair encoding
(`[CLS] q [SEP] d [SEP]` with token type ids) and converted LLMs a plain
concatenation.
"""
from __future__ import annotations

from typing import Any

from . import inputs as inp
from .templates import ScoreTemplate
from .types import Encoded, PoolingInputError


def _side(data: Any, name: str) -> list[str]:
    items = [data] if isinstance(data, str) else list(data) if isinstance(data, (list, tuple)) else None
    if items is None or not all(isinstance(x, str) for x in items):
        raise PoolingInputError("score inputs must be strings or lists of strings", name)
    return items


def pair_up(data_1: Any, data_2: Any) -> tuple[list[str], list[str]]:
    queries, docs = _side(data_1, "data_1"), _side(data_2, "data_2")
    if not queries:
        raise PoolingInputError("At least one text element must be given", "data_1")
    if not docs:
        raise PoolingInputError("At least one text_pair element must be given", "data_2")
    if len(queries) == 1:
        queries = queries * len(docs)
    elif len(queries) != len(docs):
        raise PoolingInputError("Input lengths must be either 1:1, 1:N or N:N")
    return queries, docs


def _check_limit(value: int, name: str, max_model_len: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise PoolingInputError(f"{name} must be a non-negative integer", name)
    if value >= max_model_len:
        raise PoolingInputError(f"{name} ({value}) must be less than max_model_len ({max_model_len})", name)


def cut_texts(tok: Any, texts: list[str], max_tokens: int) -> list[str]:
    """Keep the first `max_tokens` content tokens of each text, cut at a
    character offset so the pair can still be encoded from text."""
    if not max_tokens:
        return texts
    unique = list(dict.fromkeys(texts))  # 1:N repeats the query; cut it once
    enc = tok(unique, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    cut = {t: (t[:offs[max_tokens - 1][1]] if len(offs) > max_tokens else t)
           for t, offs in zip(unique, enc["offset_mapping"])}
    return [cut[t] for t in texts]


def build_score_prompts(tok: Any, data_1: Any, data_2: Any, *, template: ScoreTemplate | None,
                        use_sep_token: bool, max_tokens_per_query: int, max_tokens_per_doc: int,
                        chat_template_kwargs: dict[str, Any] | None, limit: int | None,
                        max_model_len: int) -> list[Encoded]:
    queries, docs = pair_up(data_1, data_2)
    _check_limit(max_tokens_per_query, "max_tokens_per_query", max_model_len)
    _check_limit(max_tokens_per_doc, "max_tokens_per_doc", max_model_len)
    queries = cut_texts(tok, queries, max_tokens_per_query)
    docs = cut_texts(tok, docs, max_tokens_per_doc)
    options = dict(limit=limit, max_model_len=max_model_len)
    if template is not None:
        prompts = [template.render(q, d, chat_template_kwargs) for q, d in zip(queries, docs)]
        return inp.tokenize(tok, prompts, **options)
    if use_sep_token:
        return inp.tokenize(tok, queries, docs, **options)
    return inp.tokenize(tok, [q + d for q, d in zip(queries, docs)], **options)
