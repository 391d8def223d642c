"""Entity aggregation over per-token scores, as transformers' token-classification
pipeline does it (strategies none / simple / first / average / max).

Scores are softmax probabilities (the pipeline always uses softmax here).
"""
from __future__ import annotations

from typing import Any

import numpy as np

STRATEGIES = ("none", "simple", "first", "average", "max")
IGNORE_LABELS = ("O",)


def _pre_entities(scores, input_ids, offsets, special_mask, text, tokenizer) -> list[dict[str, Any]]:
    """One dict per non-special token, with its word-piece status."""
    word_aware = bool(getattr(getattr(getattr(tokenizer, "_tokenizer", None), "model", None),
                              "continuing_subword_prefix", None))
    tokens = tokenizer.convert_ids_to_tokens(list(input_ids))
    out = []
    for idx, token_scores in enumerate(scores):
        if special_mask is not None and special_mask[idx]:
            continue
        word, start, end, is_subword = tokens[idx], None, None, False
        if offsets is not None and text is not None:
            start, end = offsets[idx]
            ref = text[start:end]
            if word_aware:
                # A WordPiece/BPE continuation ("##ing") is longer than its text.
                is_subword = len(word) != len(ref)
            else:
                is_subword = start > 0 and " " not in text[start - 1:start + 1]
            if input_ids[idx] == tokenizer.unk_token_id:
                word, is_subword = ref, False
        out.append({"word": word, "scores": token_scores, "start": start, "end": end,
                    "index": idx, "is_subword": is_subword})
    return out


def _token_entity(pre: dict[str, Any], id2label: dict[int, str]) -> dict[str, Any]:
    best = int(pre["scores"].argmax())
    return {"entity": id2label[best], "score": float(pre["scores"][best]), "index": pre["index"],
            "word": pre["word"], "start": pre["start"], "end": pre["end"]}


def _word_entity(group: list[dict[str, Any]], strategy: str, id2label, tokenizer) -> dict[str, Any]:
    if strategy == "first":
        scores = group[0]["scores"]
    elif strategy == "max":
        scores = max(group, key=lambda e: e["scores"].max())["scores"]
    else:  # average
        scores = np.nanmean(np.stack([e["scores"] for e in group]), axis=0)
    best = int(scores.argmax())
    return {"entity": id2label[best], "score": float(scores[best]),
            "word": tokenizer.convert_tokens_to_string([e["word"] for e in group]),
            "start": group[0]["start"], "end": group[-1]["end"]}


def _words(pre: list[dict[str, Any]], strategy: str, id2label, tokenizer) -> list[dict[str, Any]]:
    """Force one label per word: sub-word pieces join the word they continue."""
    groups: list[list[dict[str, Any]]] = []
    for entity in pre:
        if groups and entity["is_subword"]:
            groups[-1].append(entity)
        else:
            groups.append([entity])
    return [_word_entity(g, strategy, id2label, tokenizer) for g in groups]


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label  # not BIO: treat as a continuation


def _group(entities: list[dict[str, Any]], tokenizer) -> list[dict[str, Any]]:
    """Merge adjacent entities with the same tag, unless the next one starts with B-."""
    runs: list[list[dict[str, Any]]] = []
    for entity in entities:
        bi, tag = _tag(entity["entity"])
        if runs and tag == _tag(runs[-1][-1]["entity"])[1] and bi != "B":
            runs[-1].append(entity)
        else:
            runs.append([entity])
    return [{"entity_group": run[0]["entity"].split("-", 1)[-1],
             "score": float(np.nanmean([e["score"] for e in run])),
             "word": tokenizer.convert_tokens_to_string([e["word"] for e in run]),
             "start": run[0]["start"], "end": run[-1]["end"]} for run in runs]


def aggregate(strategy: str, scores: np.ndarray, input_ids, offsets, special_mask, text,
              tokenizer, id2label: dict[int, str]) -> list[dict[str, Any]]:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown aggregation {strategy!r}; expected one of {STRATEGIES}")
    pre = _pre_entities(scores, input_ids, offsets, special_mask, text, tokenizer)
    if strategy in ("none", "simple"):
        entities = [_token_entity(p, id2label) for p in pre]
    else:
        entities = _words(pre, strategy, id2label, tokenizer)
    if strategy != "none":
        entities = _group(entities, tokenizer)
    key = "entity" if strategy == "none" else "entity_group"
    return [e for e in entities if e[key] not in IGNORE_LABELS]
