"""Activation heads, chosen like vLLM's `get_act_fn` (reference §3.2).

Outputs are computed in fp32 on the caller's thread from the raw logits the
batcher returns, so `use_activation` and calibration are per request and cost
the device nothing.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

Activation = Callable[[torch.Tensor], torch.Tensor]


def _classify(x: torch.Tensor) -> torch.Tensor:
    # vLLM decides at run time from the last dimension: one logit is a
    # cross-encoder / binary score (sigmoid), two or more a distribution.
    return torch.sigmoid(x) if x.shape[-1] < 2 else torch.softmax(x, dim=-1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


ACTIVATIONS: dict[str, Activation] = {
    "classify": _classify,
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "identity": _identity,
}

_PROBLEM_TYPES = {
    "regression": "identity",
    "single_label_classification": "classify",
    "multi_label_classification": "sigmoid",
}

# Sentence-Transformers cross-encoders may name their activation in config.json.
_ST_CLASSES = {"Identity": "identity", "Sigmoid": "classify", "Softmax": "classify"}
# Any other class is instantiated and applied as is (vLLM wraps it), but only
# from torch's activation module: a config must not name arbitrary code.
_TORCH_ACTIVATIONS = "torch.nn.modules.activation."


def get_activation(name: str) -> Activation:
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    if name.startswith(_TORCH_ACTIVATIONS):
        cls = getattr(torch.nn.modules.activation, name[len(_TORCH_ACTIVATIONS):], None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            try:
                return cls()
            except TypeError as exc:  # e.g. Threshold, MultiheadAttention need arguments
                raise ValueError(f"activation {name!r} cannot be built without arguments: {exc}") from None
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)} "
                     f"or a class of {_TORCH_ACTIVATIONS[:-1]}")


def activation_name_for(config: dict[str, Any]) -> str:
    """The activation a model's config asks for, following transformers' loss choice."""
    problem_type = config.get("problem_type") or ""
    if problem_type in _PROBLEM_TYPES:
        return _PROBLEM_TYPES[problem_type]
    st = (config.get("sentence_transformers") or {}).get("activation_fn") or config.get(
        "sbert_ce_default_activation_function")
    if not st:
        return "classify"
    # Identity lives in torch.nn.modules.linear, Sigmoid/Softmax in .activation.
    module, _, cls = st.rpartition(".")
    if module.startswith("torch.nn.modules") and cls in _ST_CLASSES:
        return _ST_CLASSES[cls]
    return st  # get_activation builds it, or refuses it, when the engine loads


class Calibrated:
    """`activation((logit - mean) / sigma)`, vLLM's logit_mean / logit_sigma."""

    def __init__(self, activation: Activation, mean: float | None = None, sigma: float | None = None):
        if sigma is not None and sigma == 0:
            raise ValueError("logit_sigma must be non-zero")
        self.activation = activation
        self.mean = mean
        self.sigma = sigma

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            logits = logits - self.mean
        if self.sigma is not None:
            logits = logits / self.sigma
        return logits

    def __call__(self, logits: torch.Tensor, use_activation: bool | None) -> torch.Tensor:
        logits = self.calibrate(logits.float())
        # None means the pooler default, which is on (PoolingParams.verify).
        return self.activation(logits) if use_activation is not False else logits
