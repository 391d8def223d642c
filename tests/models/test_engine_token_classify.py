"""token_classify against transformers' token-classification pipeline."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

from engine_cases import TEXTS

NER_TEXTS = TEXTS + ["Angela Merkel visited Washington yesterday, said unbelievably nobody."]


@pytest.fixture(scope="module")
def reference(model_dirs):
    path = str(model_dirs["ner"])
    return AutoTokenizer.from_pretrained(path), AutoModelForTokenClassification.from_pretrained(path).eval()


def test_per_token_probs_match_model(ner, reference):
    tok, model = reference
    outs = ner.encode(NER_TEXTS, pooling_task="token_classify")
    for text, out in zip(NER_TEXTS, outs):
        ids = tok(text, return_tensors="pt")
        with torch.inference_mode():
            probs = torch.softmax(model(**ids).logits[0], -1)
        assert out.num_prompt_tokens == ids["input_ids"].shape[1] == len(out.data)
        assert torch.tensor(out.data) == pytest.approx(probs, abs=1e-5)
        assert out.entities is None


def test_raw_logits(ner, reference):
    tok, model = reference
    out = ner.encode(NER_TEXTS[3], pooling_task="token_classify", use_activation=False)[0]
    with torch.inference_mode():
        logits = model(**tok(NER_TEXTS[3], return_tensors="pt")).logits[0]
    assert torch.tensor(out.data) == pytest.approx(logits, abs=1e-5)


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_aggregation_matches_pipeline(model_dirs, ner, strategy):
    pipe = pipeline("token-classification", model=str(model_dirs["ner"]), aggregation_strategy=strategy,
                    device=-1)
    expected = pipe(NER_TEXTS)
    outs = ner.encode(NER_TEXTS, pooling_task="token_classify", aggregation=strategy)
    key = "entity" if strategy == "none" else "entity_group"
    for out, ref in zip(outs, expected):
        assert len(out.entities) == len(ref)
        for got, want in zip(out.entities, ref):
            assert got[key] == want[key]
            assert got["word"] == want["word"]
            assert (got["start"], got["end"]) == (want["start"], want["end"])
            assert got["score"] == pytest.approx(float(want["score"]), abs=1e-5)
            if strategy == "none":
                assert got["index"] == want["index"]


def test_aggregation_on_token_ids(ner):
    ids = ner.tokenizer(NER_TEXTS[3])["input_ids"]
    out = ner.encode([ids], pooling_task="token_classify", aggregation="simple")[0]
    by_text = ner.encode(NER_TEXTS[3], pooling_task="token_classify", aggregation="simple")[0]
    # Without text there are no character offsets, but the groups are the same.
    assert [e["entity_group"] for e in out.entities] == [e["entity_group"] for e in by_text.entities]
    assert all(e["start"] is None for e in out.entities)


def test_seq_classifier_serves_token_classify(model_dirs, engine_factory):
    engine = engine_factory(model_dirs["qwen"], task="token_classify")
    out = engine.encode("hello world", pooling_task="token_classify")[0]
    assert len(out.data) == out.num_prompt_tokens and len(out.data[0]) == 2
    # The last token's row is the sequence classifier's output.
    seq = engine_factory(model_dirs["qwen"]).classify("hello world")[0]
    assert out.data[-1] == pytest.approx(seq.probs, abs=1e-5)


def test_bad_aggregation(ner):
    from models import PoolingInputError

    with pytest.raises(PoolingInputError):
        ner.encode("x", pooling_task="token_classify", aggregation="bogus")


def test_modernbert_applies_its_prediction_head(tmp_path_factory, engine_factory):
    # ModernBERT runs `head` (dense + act + norm) before `classifier` on every token.
    import tiny_models

    path = tiny_models.build_modernbert_token_classifier(tmp_path_factory.mktemp("mb") / "mbtok")
    tok, model = AutoTokenizer.from_pretrained(str(path)), AutoModelForTokenClassification.from_pretrained(
        str(path)).eval()
    engine = engine_factory(path)
    for text, out in zip(NER_TEXTS, engine.encode(NER_TEXTS, pooling_task="token_classify")):
        with torch.inference_mode():
            probs = torch.softmax(model(**tok(text, return_tensors="pt")).logits[0], -1)
        assert torch.tensor(out.data) == pytest.approx(probs, abs=1e-5)
