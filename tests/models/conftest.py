"""Tiny local models (built once per session) and engines over them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/conftest.py puts tests/ on sys.path (for tiny_models), where this
# directory would shadow the engine package `models` as a namespace package;
# the repository root first makes `import models` find the real one.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
if getattr(sys.modules.get("models"), "__file__", None) is None:
    # Another conftest imported `models.catalog` through the namespace shadow
    # first; drop only the package entry (submodules stay, so classes keep
    # their identity) and let the next import find models/__init__.py.
    sys.modules.pop("models", None)

import tiny_models  # noqa: E402  (on sys.path via tests/conftest.py)

from models import PoolingEngine  # noqa: E402


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "bert": tiny_models.build_bert_classifier(root / "bert", num_labels=3,
                                                  id2label={0: "neg", 1: "neu", 2: "pos"}),
        "bert_multi": tiny_models.build_bert_classifier(root / "bert_multi", num_labels=3,
                                                        problem_type="multi_label_classification"),
        "bert_reg": tiny_models.build_bert_classifier(root / "bert_reg", num_labels=1, problem_type="regression"),
        "ner": tiny_models.build_bert_token_classifier(root / "ner"),
        "ce": tiny_models.build_bert_cross_encoder(root / "ce"),
        "qwen": tiny_models.build_qwen3_classifier(root / "qwen", num_labels=2),
        "lm": tiny_models.build_causal_lm(root / "lm"),
    }


# The engine tests run on the CPU in fp32 unless told otherwise, also on a GPU
# machine, so their tight tolerances hold everywhere; test_engine_gpu.py checks
# the GPU's own defaults. POOLQ_TEST_DEVICE=cuda POOLQ_TEST_DTYPE=float32 runs
# the whole engine suite through the CUDA path instead.
TEST_DEVICE = os.environ.get("POOLQ_TEST_DEVICE", "cpu")
TEST_DTYPE = os.environ.get("POOLQ_TEST_DTYPE", "auto")


@pytest.fixture(scope="session")
def engine_factory():
    """Build engines on demand and close them all at the end of the session."""
    engines = []

    def make(path, **kwargs):
        kwargs.setdefault("device", TEST_DEVICE)
        kwargs.setdefault("dtype", TEST_DTYPE)
        engine = PoolingEngine(str(path), **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(scope="session")
def bert(model_dirs, engine_factory):
    return engine_factory(model_dirs["bert"])


@pytest.fixture(scope="session")
def qwen(model_dirs, engine_factory):
    return engine_factory(model_dirs["qwen"])


@pytest.fixture(scope="session")
def ner(model_dirs, engine_factory):
    return engine_factory(model_dirs["ner"])


@pytest.fixture(scope="session")
def cross_encoder(model_dirs, engine_factory):
    return engine_factory(model_dirs["ce"])
