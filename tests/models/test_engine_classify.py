"""classify / encode(classify) against transformers' text-classification pipeline."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import pipeline

from models import PoolingInputError

from engine_cases import TEXTS

TOL = 1e-5


def _pipeline_scores(path, texts, function_to_apply):
    pipe = pipeline("text-classification", model=str(path), device=-1)
    out = pipe(texts, top_k=None, function_to_apply=function_to_apply)
    id_of = pipe.model.config.label2id
    return [[d["score"] for d in sorted(row, key=lambda d: id_of[d["label"]])] for row in out]


@pytest.mark.parametrize("function_to_apply,use_activation", [("softmax", None), ("none", False)])
def test_bert_matches_pipeline(model_dirs, bert, function_to_apply, use_activation):
    expected = _pipeline_scores(model_dirs["bert"], TEXTS, function_to_apply)
    got = bert.classify(TEXTS, use_activation=use_activation)
    for out, ref in zip(got, expected):
        assert out.probs == pytest.approx(ref, abs=TOL)
        assert out.label == ["neg", "neu", "pos"][max(range(3), key=ref.__getitem__)]


def test_multi_label_uses_sigmoid(model_dirs, engine_factory):
    engine = engine_factory(model_dirs["bert_multi"])
    expected = _pipeline_scores(model_dirs["bert_multi"], TEXTS, "sigmoid")
    for out, ref in zip(engine.classify(TEXTS), expected):
        assert out.probs == pytest.approx(ref, abs=TOL)
        assert sum(out.probs) != pytest.approx(1.0, abs=1e-3)  # not a softmax


def test_regression_is_identity(model_dirs, engine_factory):
    engine = engine_factory(model_dirs["bert_reg"])
    raw = engine.classify(TEXTS, use_activation=False)
    act = engine.classify(TEXTS)
    assert [o.probs for o in act] == [o.probs for o in raw]


def test_single_label_uses_sigmoid(cross_encoder):
    raw = cross_encoder.classify(TEXTS, use_activation=False)
    act = cross_encoder.classify(TEXTS)
    for r, a in zip(raw, act):
        assert a.probs[0] == pytest.approx(1 / (1 + math.exp(-r.probs[0])), abs=1e-6)
        assert a.label == "LABEL_0"


def test_decoder_classifier_matches_pipeline(model_dirs, qwen):
    assert qwen.pooling_type == "LAST"
    expected = _pipeline_scores(model_dirs["qwen"], TEXTS, "softmax")
    for out, ref in zip(qwen.classify(TEXTS), expected):
        assert out.probs == pytest.approx(ref, abs=TOL)


def test_decoder_pools_last_real_token_not_padding(model_dirs, qwen):
    # One long and one short prompt in a batch: the short one is padded; its
    # result must equal a lone forward of exactly its tokens.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dirs["qwen"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dirs["qwen"])).eval()
    ids = tok("a")["input_ids"]
    with torch.inference_mode():
        ref = model(input_ids=torch.tensor([ids])).logits[0].tolist()
    out = qwen.classify(["a", TEXTS[5]], use_activation=False)[0]
    assert out.probs == pytest.approx(ref, abs=TOL)


def test_token_ids_equal_text(bert):
    ids = bert.tokenizer(TEXTS[1])["input_ids"]
    assert bert.classify([ids])[0].probs == pytest.approx(bert.classify(TEXTS[1])[0].probs, abs=1e-6)
    assert bert.classify(ids)[0].num_prompt_tokens == len(ids)


def test_encode_classify_is_classify(bert):
    enc = bert.encode(TEXTS, pooling_task="classify")
    cls = bert.classify(TEXTS)
    for e, c in zip(enc, cls):
        assert e.data == pytest.approx(c.probs, abs=1e-6)
        assert e.num_prompt_tokens == c.num_prompt_tokens and e.entities is None


def test_calibration(model_dirs, engine_factory, bert):
    engine = engine_factory(model_dirs["bert"], logit_mean=0.5, logit_sigma=2.0)
    raw = bert.classify(TEXTS[:2], use_activation=False)
    got = engine.classify(TEXTS[:2])
    for r, g in zip(raw, got):
        expected = torch.softmax((torch.tensor(r.probs) - 0.5) / 2.0, -1).tolist()
        assert g.probs == pytest.approx(expected, abs=1e-6)


def test_truncation_sides(bert):
    ids = bert.tokenizer(TEXTS[1])["input_ids"]
    right = bert.classify(TEXTS[1], truncate_prompt_tokens=5)[0]
    left = bert.classify(TEXTS[1], truncate_prompt_tokens=5, truncation_side="left")[0]
    assert right.num_prompt_tokens == left.num_prompt_tokens == 5
    # HF truncation keeps [CLS] ... [SEP]: right keeps the first 3 words, left the last 3.
    assert right.probs == pytest.approx(bert.classify([ids[:4] + [ids[-1]]])[0].probs, abs=1e-6)
    assert left.probs == pytest.approx(bert.classify([[ids[0]] + ids[-4:]])[0].probs, abs=1e-6)
    full = bert.classify(TEXTS[1], truncate_prompt_tokens=-1)[0]
    assert full.num_prompt_tokens == len(ids)


def test_truncation_of_token_ids(bert):
    ids = list(range(1000, 1020))
    assert bert.classify([ids], truncate_prompt_tokens=4)[0].probs == pytest.approx(
        bert.classify([ids[:4]])[0].probs, abs=1e-6)
    assert bert.classify([ids], truncate_prompt_tokens=4, truncation_side="left")[0].probs == pytest.approx(
        bert.classify([ids[-4:]])[0].probs, abs=1e-6)


def test_add_special_tokens_false(bert):
    out = bert.classify("hello world", add_special_tokens=False)[0]
    assert out.num_prompt_tokens == 2


@pytest.mark.parametrize("prompts,kwargs,message,parameter", [
    ([], {}, "You must pass at least one prompt", "input"),
    ([[]], {}, "The decoder prompt cannot be empty", "input"),
    ("word " * 200, {}, "This model's maximum context length is 128 tokens. However, your prompt contains at "
     "least 129 input tokens, which exceeds this limit even without any output tokens. Please reduce the "
     "length of the input prompt.", "input_tokens"),
    ("hi", {"truncate_prompt_tokens": 129}, "truncate_prompt_tokens value is greater than max_model_len. "
     "Please request a smaller truncation size.", "truncate_prompt_tokens"),
    ([[10**6]], {}, "Token id 1000000 is out of vocabulary", "input"),
])
def test_input_errors(bert, prompts, kwargs, message, parameter):
    with pytest.raises(PoolingInputError) as err:
        bert.classify(prompts, **kwargs)
    assert str(err.value) == message
    assert err.value.parameter == parameter
    assert isinstance(err.value, ValueError)


def test_over_length_token_ids(bert):
    with pytest.raises(PoolingInputError, match="at least 200 input tokens"):
        bert.classify([[1000] * 200])


def test_task_errors(bert, ner):
    with pytest.raises(PoolingInputError, match="Try switching the model's pooling_task"):
        bert.encode("x", pooling_task="token_classify")
    with pytest.raises(PoolingInputError, match="Unsupported task: 'classify'"):
        ner.classify("x")
    with pytest.raises(PoolingInputError, match="Unsupported task: 'embed'"):
        bert.encode("x", pooling_task="embed")


def test_card(bert):
    assert bert.card.task == "classify" and bert.card.num_labels == 3
    assert bert.card.labels == ["neg", "neu", "pos"] and bert.card.max_model_len == 128


def test_modernbert_classify_matches_transformers(tmp_path_factory, engine_factory):
    import tiny_models

    path = tiny_models.build_modernbert_classifier(tmp_path_factory.mktemp("mb") / "mbseq")
    expected = _pipeline_scores(path, TEXTS, "softmax")
    for out, ref in zip(engine_factory(path).classify(TEXTS), expected):
        assert out.probs == pytest.approx(ref, abs=TOL)


def _with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


def test_sentence_transformers_activation_is_applied(model_dirs, tmp_path, engine_factory, cross_encoder):
    # vLLM applies any other torch.nn activation named by the cross-encoder as is.
    path = _with_config(model_dirs["ce"], tmp_path / "ce_tanh",
                        sentence_transformers={"activation_fn": "torch.nn.modules.activation.Tanh"})
    engine = engine_factory(path)
    raw = [o.probs[0] for o in cross_encoder.classify(TEXTS, use_activation=False)]
    assert [o.probs[0] for o in engine.classify(TEXTS)] == pytest.approx(torch.tanh(torch.tensor(raw)).tolist(),
                                                                        abs=1e-6)
    assert [o.probs[0] for o in engine.classify(TEXTS, use_activation=False)] == pytest.approx(raw, abs=1e-6)


@pytest.mark.parametrize("name", ["torch.nn.modules.linear.Linear", "torch.nn.modules.activation.Threshold",
                                  "torch.nn.modules.activation.NoSuchThing", "os.system"])
def test_unusable_sentence_transformers_activation_fails_at_load(model_dirs, tmp_path, engine_factory, name):
    path = _with_config(model_dirs["ce"], tmp_path / "ce_bad", sbert_ce_default_activation_function=name)
    with pytest.raises(ValueError, match="activation"):
        engine_factory(path)


def _bare(cls, config_cls, **extra):
    return cls(config_cls(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=16, **extra)).eval()


def test_build_heads_refuses_a_skipped_layer():
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification, Qwen3Config, Qwen3ForSequenceClassification,
                              RobertaConfig, RobertaForSequenceClassification)

    from models.heads import build_heads

    known = [_bare(BertForSequenceClassification, BertConfig), _bare(RobertaForSequenceClassification, RobertaConfig),
             _bare(Qwen3ForSequenceClassification, Qwen3Config, num_key_value_heads=1, head_dim=4),
             DistilBertForSequenceClassification(DistilBertConfig(vocab_size=99, dim=8, n_layers=1, n_heads=2,
                                                                  hidden_dim=16))]
    for model in known:
        assert build_heads(model, type(model).__name__).seq is not None
        # An unknown family that only looks like a known one: a layer no head uses.
        model.extra = torch.nn.Linear(2, 2)
        heads = build_heads(model, type(model).__name__)
        assert heads.seq is None and heads.token is None
