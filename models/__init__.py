"""poolq's pooling engine: loading, poolers, activations, batcher, offline API.

Importing this package must not import torch: the API process imports
`models.catalog` (torch-free) and so runs this file. The engine classes are
therefore resolved lazily on first attribute access.
"""
from __future__ import annotations

from typing import Any

_LAZY = {
    "PoolingEngine": "models.engine",
    "PoolingInputError": "models.types",
    "ClassificationOutput": "models.types",
    "PoolingOutput": "models.types",
    "ScoringOutput": "models.types",
    "materialize_demo_model": "models.demo",
    "DEMO_DESCRIPTION": "models.demo",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value
