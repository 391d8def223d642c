"""score: BERT cross-encoder vs sentence-transformers, converted LLM vs a manual computation."""
from __future__ import annotations

import math

import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForCausalLM, AutoTokenizer

from models import PoolingInputError

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is in germany", "a"]
TEMPLATE = ("{{ instruction | default('judge') }} query: "
            "{{ (messages | selectattr('role', 'eq', 'query') | first).content }}\n"
            "{% for m in messages if m.role == 'document' %}doc: {{ m.content }}{% endfor %}")


def test_cross_encoder_matches_sentence_transformers(model_dirs, cross_encoder):
    ce = CrossEncoder(str(model_dirs["ce"]), device="cpu")
    expected = ce.predict([(QUERY, d) for d in DOCS])
    got = cross_encoder.score(QUERY, DOCS)
    assert [o.score for o in got] == pytest.approx(expected.tolist(), abs=1e-5)
    raw = cross_encoder.score(QUERY, DOCS, use_activation=False)
    assert [1 / (1 + math.exp(-o.score)) for o in raw] == pytest.approx(expected.tolist(), abs=1e-5)


def test_pairing_shapes(cross_encoder):
    one_to_n = [o.score for o in cross_encoder.score(QUERY, DOCS)]
    n_to_n = [o.score for o in cross_encoder.score([QUERY] * 3, DOCS)]
    assert one_to_n == pytest.approx(n_to_n, abs=1e-6)
    one = cross_encoder.score(QUERY, DOCS[0])
    assert len(one) == 1 and one[0].score == pytest.approx(one_to_n[0], abs=1e-6)
    tok = cross_encoder.tokenizer(QUERY, DOCS[0])["input_ids"]
    assert one[0].num_prompt_tokens == len(tok)


@pytest.mark.parametrize("data_1,data_2,message", [
    (["a", "b"], ["c", "d", "e"], "Input lengths must be either 1:1, 1:N or N:N"),
    ([], ["c"], "At least one text element must be given"),
    ("a", [], "At least one text_pair element must be given"),
])
def test_pairing_errors(cross_encoder, data_1, data_2, message):
    with pytest.raises(PoolingInputError, match=message):
        cross_encoder.score(data_1, data_2)


def test_score_needs_one_label(bert):
    with pytest.raises(PoolingInputError, match=r"Scoring API is only enabled for num_labels == 1\."):
        bert.score("a", "b")


def test_max_tokens_per_doc(cross_encoder):
    long_doc = "paris is the capital of france and its largest city by far"
    cut = cross_encoder.score(QUERY, long_doc, max_tokens_per_doc=3)[0]
    assert cut.score == pytest.approx(cross_encoder.score(QUERY, "paris is the")[0].score, abs=1e-6)
    with pytest.raises(PoolingInputError, match="max_tokens_per_query must be a non-negative integer"):
        cross_encoder.score(QUERY, long_doc, max_tokens_per_query=-1)


def test_over_length_pair(cross_encoder):
    with pytest.raises(PoolingInputError, match="Please reduce the length of the input prompt"):
        cross_encoder.score(QUERY, "word " * 300)
    assert cross_encoder.score(QUERY, "word " * 300, truncate_prompt_tokens=-1)[0].num_prompt_tokens == 128


@pytest.fixture(scope="module")
def lm_reference(model_dirs):
    path = str(model_dirs["lm"])
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def _p_yes(lm_reference, text):
    tok, model = lm_reference
    ids = tok(text, return_tensors="pt")
    with torch.inference_mode():
        z = model(**ids).logits[0, -1].float()
    no, yes = tok.convert_tokens_to_ids(["no", "yes"])
    return torch.softmax(torch.stack([z[no], z[yes]]), -1)[1].item()


def test_converted_lm_reranker(model_dirs, engine_factory, lm_reference):
    engine = engine_factory(model_dirs["lm"], hf_overrides={
        "architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
        "is_original_qwen3_reranker": True})
    assert engine.card.num_labels == 1 and engine.pooling_type == "LAST"
    got = [o.score for o in engine.score(QUERY, DOCS)]
    # No template: a converted LLM sees the plain concatenation q + d.
    assert got == pytest.approx([_p_yes(lm_reference, QUERY + d) for d in DOCS], abs=1e-5)
    # classify on the same model gives the same P(yes).
    assert engine.classify(QUERY + DOCS[0])[0].probs[0] == pytest.approx(got[0], abs=1e-6)


def test_converted_lm_with_template(model_dirs, engine_factory, lm_reference):
    engine = engine_factory(model_dirs["lm"], score_template=TEMPLATE,
                            hf_overrides={"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"})
    got = engine.score(QUERY, DOCS[:2], chat_template_kwargs={"instruction": "rank"})
    for out, doc in zip(got, DOCS[:2]):
        rendered = f"rank query: {QUERY}\ndoc: {doc}"
        assert out.score == pytest.approx(_p_yes(lm_reference, rendered), abs=1e-5)


def test_no_post_processing(model_dirs, engine_factory, lm_reference):
    engine = engine_factory(model_dirs["lm"], hf_overrides={"classifier_from_token": ["yes"],
                                                            "method": "no_post_processing"})
    tok, model = lm_reference
    out = engine.classify("is it", use_activation=False)[0]
    with torch.inference_mode():
        z = model(**tok("is it", return_tensors="pt")).logits[0, -1]
    assert out.probs == pytest.approx([z[tok.convert_tokens_to_ids("yes")].item()], abs=1e-5)


def test_explicit_use_sep_token_on_converted_lm(model_dirs, engine_factory, lm_reference):
    # use_sep_token only *defaults* to False for a converted LM (vLLM §3.5).
    engine = engine_factory(model_dirs["lm"], hf_overrides={"classifier_from_token": ["no", "yes"],
                                                            "use_sep_token": True})
    tok, model = lm_reference
    no, yes = tok.convert_tokens_to_ids(["no", "yes"])
    for out, doc in zip(engine.score(QUERY, DOCS), DOCS):
        ids = tok(QUERY, doc, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            z = model(input_ids=ids).logits[0, -1].float()
        assert out.num_prompt_tokens == ids.shape[1]
        assert out.score == pytest.approx(torch.softmax(z[[no, yes]], -1)[1].item(), abs=1e-5)


def test_qwen3_reranker_flag_needs_its_tokens(model_dirs, engine_factory):
    from models.catalog import ModelSourceError

    with pytest.raises(ModelSourceError, match=r'classifier_from_token": \["no", "yes"\]'):
        engine_factory(model_dirs["lm"], hf_overrides={"architectures": ["Qwen3ForSequenceClassification"],
                                                       "is_original_qwen3_reranker": True})


def test_head_missing_from_checkpoint_is_refused(model_dirs, engine_factory):
    # A causal LM checkpoint has no `score` weights for a sequence classifier.
    with pytest.raises(ValueError, match=r"no weights for score\.weight"):
        engine_factory(model_dirs["lm"], hf_overrides={"architectures": ["Qwen3ForSequenceClassification"]})
