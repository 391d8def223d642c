"""Load tokenizer and weights once, with the operator's safety settings.

The same path serves a local directory and a hub id (with `revision`), so
tests on tiny local checkpoints exercise the production loading code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

from .catalog import ModelCard
from .heads import FromTokenHead, Heads, build_heads
from .poolers import default_pooling_type, get_pooler
from .runner import SplitRunner, WholeModelRunner

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}

# Keys vLLM reads from hf_overrides to convert an LM; they are not config fields
# of the causal LM we load, so they must not be set on it.
_CONVERSION_KEYS = {"classifier_from_token", "method", "is_original_qwen3_reranker", "architectures",
                    "use_sep_token"}


@dataclass
class Loaded:
    tokenizer: Any
    runner: SplitRunner | WholeModelRunner
    device: torch.device
    dtype: torch.dtype
    pooling_type: str | None  # None when the model's own forward pools
    supports_token: bool
    supports_seq: bool


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 keeps fp32's range (no overflow in logits) at half the bytes;
        # CPUs without AMX run it slower than fp32, hence fp32 there.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of {sorted(_DTYPES)}") from None


def _from_pretrained(cls, source, *, revision, dtype, allow_pickle, trust_remote_code, **kwargs):
    common = dict(revision=revision, dtype=dtype, trust_remote_code=trust_remote_code,
                  # safetensors only unless the operator opts in: a pickle
                  # checkpoint can run arbitrary code when unpickled.
                  use_safetensors=None if allow_pickle else True, **kwargs)
    try:
        model, info = cls.from_pretrained(source, attn_implementation="sdpa", output_loading_info=True, **common)
    except ValueError as exc:
        if "sdpa" not in str(exc).lower():
            raise
        model, info = cls.from_pretrained(source, output_loading_info=True, **common)  # no SDPA support
    # transformers initializes weights the checkpoint lacks at random and only
    # logs it (e.g. a causal LM loaded as *ForSequenceClassification has no
    # `score`); serving those would give confident random outputs. Tied
    # weights and buffers transformers may rebuild are not reported.
    # (Sets in transformers 5, lists in 4.)
    missing = sorted(set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]})
    if missing:
        raise ValueError(f"{source}: the checkpoint has no weights for {', '.join(missing)}; refusing to serve "
                         f"randomly initialized {cls.__name__} weights (is architectures or "
                         "classifier_from_token right?)")
    return model


def _model_class(architecture: str, task: str):
    cls = getattr(transformers, architecture, None)
    if cls is not None:
        return cls
    # Remote-code or renamed classes: let the Auto class resolve it from config.
    return (transformers.AutoModelForTokenClassification if "TokenClassification" in architecture
            else transformers.AutoModelForSequenceClassification)


def load(card: ModelCard, *, revision=None, dtype="auto", device=None, allow_pickle=False,
         trust_remote_code=False, pooling_type=None, hf_overrides=None) -> Loaded:
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    options = dict(revision=revision, dtype=torch_dtype, allow_pickle=allow_pickle,
                   trust_remote_code=trust_remote_code)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        card.source, revision=revision, trust_remote_code=trust_remote_code)
    overrides = {k: v for k, v in (hf_overrides or {}).items() if k not in _CONVERSION_KEYS}

    if card.is_converted:
        model = _from_pretrained(transformers.AutoModelForCausalLM, card.source, **options, **overrides)
        token_ids = tokenizer.convert_tokens_to_ids(list(card.classifier_from_token))
        if any(t is None or t == tokenizer.unk_token_id for t in token_ids):
            raise ValueError(f"classifier_from_token {card.classifier_from_token} are not single tokens "
                             "of this tokenizer")
        head = FromTokenHead(model.get_output_embeddings().weight, token_ids, card.conversion_method)
        heads = Heads(seq=head, token=head)
        backbone = model.base_model
        model_type = "converted"
    else:
        cls = _model_class(card.architecture, card.task)
        model = _from_pretrained(cls, card.source, **options, **overrides)
        heads = build_heads(model, card.architecture)
        backbone = model.base_model
        model_type = card.model_type

    model.to(device).eval()
    if heads.seq is None and heads.token is None:
        if pooling_type:
            raise ValueError(f"pooling_type override is not supported for {card.architecture}")
        runner = WholeModelRunner(model)
        is_token = "TokenClassification" in card.architecture
        return Loaded(tokenizer, runner, device, torch_dtype, None, is_token, not is_token)

    for head in (heads.seq, heads.token):
        if isinstance(head, nn.Module):
            head.to(device)
    chosen = (pooling_type or default_pooling_type(model_type)).upper()
    runner = SplitRunner(backbone, heads, get_pooler(chosen))
    return Loaded(tokenizer, runner, device, torch_dtype, chosen, heads.token is not None, heads.seq is not None)
