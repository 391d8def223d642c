"""What a served model can do, read from its config without loading weights.

Torch-free on purpose: the API process uses this to list models, route
requests and reject unsupported tasks, and it must never import torch. The
engine uses the same description so both sides agree on tasks and labels.

The rules follow vLLM 0.33 (reference §1.1, §3.5): one active pooling task
per model; `*ForTokenClassification` defaults to `token_classify`, every other
classifier to `classify`; score and rerank exist only when `num_labels == 1`;
a `*ForCausalLM` becomes a classifier through `classifier_from_token`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POOLING_TASKS = ("classify", "token_classify")

# vLLM's online conversion methods (SEQ_CLS_LOAD_METHODS); the 2-way method
# folds [no, yes] into one logit, so the converted model has a single label.
CONVERSION_METHODS = ("from_2_way_softmax", "no_post_processing")


class ModelSourceError(ValueError):
    """The model's source cannot be read or describes no pooling model."""


@dataclass(frozen=True)
class ModelCard:
    source: str
    revision: str | None
    architecture: str
    model_type: str
    task: str  # the active pooling task: "classify" or "token_classify"
    num_labels: int
    id2label: dict[int, str]
    max_model_len: int
    problem_type: str | None = None
    # Set when a causal LM is served as a classifier (vLLM `--convert classify`).
    classifier_from_token: tuple[str, ...] | None = None
    conversion_method: str | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]

    @property
    def supports_score(self) -> bool:
        return self.task == "classify" and self.num_labels == 1

    @property
    def supported_tasks(self) -> tuple[str, ...]:
        """Pooling tasks the model can run; only `task` is active (vLLM §1.1)."""
        if "ForTokenClassification" in self.architecture:
            return ("token_classify",)
        return POOLING_TASKS

    @property
    def tasks(self) -> tuple[str, ...]:
        """The job tasks (and vLLM routes) this model serves."""
        if self.supports_score:
            return ("classify", "score", "rerank")
        return (self.task,)

    @property
    def is_converted(self) -> bool:
        return self.classifier_from_token is not None


def load_config(source: str, revision: str | None = None) -> dict[str, Any]:
    """Return config.json of a local model directory or a hub repository."""
    return json.loads(_read_model_file(source, "config.json", revision, required=True))


def _read_model_file(source: str, filename: str, revision: str | None, required: bool) -> str | None:
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        if path.is_file():
            return path.read_text(encoding="utf-8")
        if required:
            raise ModelSourceError(f"{local} has no {filename}; is it a transformers model directory?")
        return None
    if local.exists() or source.startswith((".", "/", "~")):
        raise ModelSourceError(f"model source {source!r} is not a directory")
    # A hub id: huggingface_hub honours HF_HUB_OFFLINE and its cache, so a
    # pre-downloaded model works on a machine that cannot reach the hub.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename, revision=revision)).read_text(encoding="utf-8")
    except EntryNotFoundError:
        if required:
            raise ModelSourceError(f"{source!r} has no {filename}") from None
        return None
    except Exception as exc:  # network, auth, offline cache miss: all mean "cannot read"
        if required:
            raise ModelSourceError(f"cannot read {filename} of {source!r}: {exc}") from exc
        return None


def describe(
    source: str,
    revision: str | None = None,
    hf_overrides: dict[str, Any] | None = None,
    task: str | None = None,
    max_model_len: int | None = None,
) -> ModelCard:
    """Describe a pooling model from its config (plus vLLM-style overrides)."""
    config = {**load_config(source, revision), **(hf_overrides or {})}
    architectures = config.get("architectures") or []
    if not architectures:
        raise ModelSourceError(f"{source!r}: config.json names no architecture")
    architecture = architectures[0]

    from_token, method = _conversion(config)
    if from_token is None and not architecture.endswith(("ForSequenceClassification", "ForTokenClassification")):
        raise ModelSourceError(
            f"{source!r} is a {architecture}, not a pooling model; serve a *ForSequenceClassification or "
            "*ForTokenClassification model, or convert a causal LM with `classifier_from_token`"
        )
    if from_token is not None:
        num_labels = 1 if method == "from_2_way_softmax" else len(from_token)
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    else:
        id2label = _id2label(config)
        num_labels = len(id2label)

    default_task = "token_classify" if "ForTokenClassification" in architecture else "classify"
    chosen = task or default_task
    if chosen not in POOLING_TASKS:
        raise ModelSourceError(f"Unsupported task: {chosen!r} Supported tasks: {POOLING_TASKS}")
    if chosen == "classify" and default_task == "token_classify":
        raise ModelSourceError(f"{architecture} supports only token_classify")

    return ModelCard(
        source=source,
        revision=revision,
        architecture=architecture,
        model_type=config.get("model_type", ""),
        task=chosen,
        num_labels=num_labels,
        id2label=id2label,
        max_model_len=max_model_len or _max_model_len(source, revision, config),
        problem_type=config.get("problem_type"),
        classifier_from_token=from_token,
        conversion_method=method,
        config=config,
    )


def _conversion(config: dict[str, Any]) -> tuple[tuple[str, ...] | None, str | None]:
    tokens = config.get("classifier_from_token")
    if config.get("is_original_qwen3_reranker") and (not isinstance(tokens, (list, tuple)) or len(tokens) != 2):
        # Without the tokens there is no score head to build from the LM head:
        # the checkpoint has none, so the model would score with random weights.
        raise ModelSourceError('is_original_qwen3_reranker needs classifier_from_token with two tokens, '
                               'e.g. "classifier_from_token": ["no", "yes"]')
    if not tokens:
        return None, None
    method = config.get("method")
    if method is None:
        # vLLM's Qwen3-Reranker recipe: the flag implies the 2-way method.
        method = "from_2_way_softmax" if config.get("is_original_qwen3_reranker") or len(tokens) == 2 else "no_post_processing"
    if method not in CONVERSION_METHODS:
        raise ModelSourceError(f"unknown conversion method {method!r}; expected one of {CONVERSION_METHODS}")
    if method == "from_2_way_softmax" and len(tokens) != 2:
        raise ModelSourceError("from_2_way_softmax needs exactly two tokens in classifier_from_token: [false, true]")
    return tuple(tokens), method


def _id2label(config: dict[str, Any]) -> dict[int, str]:
    raw = config.get("id2label")
    if raw:
        return {int(k): str(v) for k, v in raw.items()}
    # transformers fills LABEL_i when a checkpoint names none; vLLM reports those.
    return {i: f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}


def _max_model_len(source: str, revision: str | None, config: dict[str, Any]) -> int:
    text_config = config.get("text_config") or config
    length = text_config.get("max_position_embeddings") or 512
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        # RoBERTa positions start after padding_idx, so two slots are unusable.
        length -= int(config.get("pad_token_id", 1)) + 1
    # Sentence-Transformers models cap the length they were trained on; vLLM honours it.
    st_config = _read_model_file(source, "sentence_bert_config.json", revision, required=False)
    if st_config:
        st_len = json.loads(st_config).get("max_seq_length")
        if st_len:
            length = min(length, int(st_len))
    return int(length)
