"""vLLM's pooling routes over HTTP, through the queue and a real worker.

Expected values come from transformers / sentence-transformers on the same
checkpoints; shapes and messages from vLLM 0.33 (shared/reference).
"""

from __future__ import annotations

import base64
import struct

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          AutoTokenizer)

from test_jobs_validation import assert_error

pytestmark = pytest.mark.usefixtures("worker_process")

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "bananas are yellow", "the eiffel tower is in paris"]


@pytest.fixture(scope="module")
def hf(served_models):
    """Reference forward passes, one text (or pair) at a time, fp32."""
    cache = {}

    def load(name, cls):
        if name not in cache:
            cache[name] = (AutoTokenizer.from_pretrained(served_models[name]),
                           cls.from_pretrained(served_models[name]).eval())
        return cache[name]

    class Ref:
        @staticmethod
        def classify_logits(text):
            tok, model = load("tiny", AutoModelForSequenceClassification)
            with torch.inference_mode():
                return model(**tok(text, return_tensors="pt")).logits[0]

        @staticmethod
        def pair_score(query, doc):
            tok, model = load("ce", AutoModelForSequenceClassification)
            with torch.inference_mode():
                return torch.sigmoid(model(**tok(query, doc, return_tensors="pt")).logits[0, 0]).item()

        @staticmethod
        def token_probs(text):
            tok, model = load("ner", AutoModelForTokenClassification)
            with torch.inference_mode():
                return model(**tok(text, return_tensors="pt")).logits[0].softmax(-1)

    return Ref


# -- /classify ---------------------------------------------------------------

def test_classify_sync_matches_vllm_shape_and_transformers(client, hf):
    response = client.post("/classify", json={"model": "tiny", "input": ["good", "bad"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["id"].startswith("classify-") and len(body["id"]) == len("classify-") + 16
    assert body["object"] == "list" and body["model"] == "tiny"
    for i, text in enumerate(["good", "bad"]):
        assert body["data"][i]["index"] == i
        assert torch.allclose(torch.tensor(body["data"][i]["probs"]), hf.classify_logits(text).softmax(-1), atol=1e-4)
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details",
                                  "completion_tokens_details"}


def test_model_may_be_omitted_when_it_is_the_first_served(client):
    response = client.post("/classify", json={"input": "hello"})
    assert response.status_code == 200 and response.json()["model"] == "tiny"


def test_classify_accepts_token_ids(client, hf):
    ids = AutoTokenizer.from_pretrained(client.get("/v1/models").json()["data"][0]["root"])("good")["input_ids"]
    body = client.post("/classify", json={"model": "tiny", "input": ids}).json()
    assert len(body["data"]) == 1
    assert torch.allclose(torch.tensor(body["data"][0]["probs"]), hf.classify_logits("good").softmax(-1), atol=1e-4)


def test_classify_chat_form_uses_the_chat_template(client, hf):
    messages = [{"role": "user", "content": "is this good?"}]
    body = client.post("/classify", json={"model": "tiny", "messages": messages}).json()
    rendered = "user: is this good?\n"
    tok = AutoTokenizer.from_pretrained(client.get("/v1/models").json()["data"][0]["root"])
    expected_tokens = len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert body["usage"]["prompt_tokens"] == expected_tokens
    assert len(body["data"]) == 1


def test_chat_with_both_generation_flags_is_400(client):
    response = client.post("/classify", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                              "add_generation_prompt": True, "continue_final_message": True})
    assert_error(response, 400, contains="Cannot set both `continue_final_message` and `add_generation_prompt`")


def test_classify_on_a_token_classifier_is_400_saying_why(client):
    response = client.post("/classify", json={"model": "ner", "input": "x"})
    error = assert_error(response, 400, "BadRequestError", "model")
    assert error["message"].startswith("Model `ner` (BertForTokenClassification) does not serve classify: "
                                       "it supports only token_classify")
    assert response.json()["detail"] == "Not Found"  # vLLM mounts no /classify for it


# -- /pooling ----------------------------------------------------------------

def test_pooling_classify_returns_probabilities(client, hf):
    body = client.post("/pooling", json={"model": "tiny", "input": "good"}).json()
    assert body["id"].startswith("pooling-")
    assert body["data"][0]["object"] == "pooling"
    assert torch.allclose(torch.tensor(body["data"][0]["data"]), hf.classify_logits("good").softmax(-1), atol=1e-4)


def test_pooling_token_classify_gives_per_token_rows(client, hf):
    body = client.post("/pooling", json={"model": "ner", "input": "anna lives in berlin"}).json()
    rows = torch.tensor(body["data"][0]["data"])
    expected = hf.token_probs("anna lives in berlin")
    assert rows.shape == expected.shape
    assert torch.allclose(rows, expected, atol=1e-4)
    assert body["usage"]["prompt_tokens"] == expected.shape[0]


def test_pooling_base64_is_the_raw_float32_tensor(client):
    floats = client.post("/pooling", json={"model": "tiny", "input": "good"}).json()["data"][0]["data"]
    encoded = client.post("/pooling", json={"model": "tiny", "input": "good", "encoding_format": "base64"}).json()
    raw = base64.b64decode(encoded["data"][0]["data"])
    assert list(struct.unpack(f"<{len(floats)}f", raw)) == pytest.approx(floats, abs=1e-6)


def test_token_classify_entities_as_a_native_job(client):
    response = client.post("/v1/jobs", json={"task": "token_classify", "model": "ner", "input": "anna lives in berlin",
                                             "aggregation_strategy": "simple"})
    assert response.status_code == 202, response.text
    job = client.wait_job(response.json()["id"])
    assert job["status"] == "succeeded", job
    item = job["result"]["data"][0]
    assert isinstance(item["entities"], list)
    for entity in item["entities"]:
        assert {"entity_group", "score", "word", "start", "end"} <= set(entity)
        assert "anna lives in berlin"[entity["start"]:entity["end"]].lower() == entity["word"].lower()


@pytest.mark.parametrize("body,contains,param", [
    # vLLM's opening (its tests match on it), then poolq's own option, not vLLM's --pooler-config flag.
    ({"model": "tiny", "input": "x", "task": "token_classify"},
     "Try switching the model's pooling_task via poolq's --model option. Model `tiny` "
     "(BertForSequenceClassification) is served for classify, not token_classify: a model serves one pooling "
     "task. Serve it with --model tiny=SOURCE?task=token_classify", "task"),
    ({"model": "ner", "input": "x", "task": "classify"},
     "Unsupported task: 'classify' Supported tasks: ('token_classify',). Model `ner`", "task"),
    ({"model": "tiny", "input": "x", "task": "embed"}, "Unsupported task: 'embed'", "task"),
    ({"model": "tiny", "input": "x", "task": "score"}, "`score` task was removed", "task"),
    ({"model": "tiny", "input": "x", "task": "encode"}, "`encode` task was removed", "task"),
    ({"model": "tiny", "input": "x", "normalize": True}, "Parameter `normalize` was removed", "normalize"),
    ({"model": "tiny", "input": "x", "dimensions": 8}, "dimensions is currently not supported", "dimensions"),
])
def test_pooling_validation_errors(client, body, contains, param):
    assert_error(client.post("/pooling", json=body), 400, "BadRequestError", param, contains)


def test_pooling_bad_encoding_format_is_a_literal_error(client):
    # vLLM's test_params_not_supported looks for the error type and the bad value.
    error = assert_error(client.post("/pooling", json={"model": "tiny", "input": "x", "encoding_format": "nope"}),
                         400, "BadRequestError", "body.encoding_format")
    assert error["message"] == ("Invalid request: `encoding_format`: Input should be 'float', 'base64', 'bytes' or "
                                "'bytes_only', got 'nope' [literal_error].")


# -- /score and /rerank ----------------------------------------------------------

@pytest.mark.parametrize("route", ["/score", "/v1/score"])
@pytest.mark.parametrize("first,second", [("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
                                          ("text_1", "text_2")])
def test_score_one_to_many_in_every_shape(client, hf, route, first, second):
    body = client.post(route, json={"model": "ce", first: QUERY, second: DOCS}).json()
    assert body["id"].startswith("score-") and body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for item, doc in zip(body["data"], DOCS):
        assert item["object"] == "score"
        assert item["score"] == pytest.approx(hf.pair_score(QUERY, doc), abs=1e-4)


def test_score_n_to_n_and_one_to_one(client, hf):
    queries = ["q one", "q two"]
    body = client.post("/score", json={"model": "ce", "queries": queries, "documents": DOCS[:2]}).json()
    assert [d["score"] for d in body["data"]] == pytest.approx(
        [hf.pair_score(q, d) for q, d in zip(queries, DOCS[:2])], abs=1e-4)
    one = client.post("/score", json={"model": "ce", "text_1": "a", "text_2": "b"}).json()
    assert len(one["data"]) == 1


def test_score_use_activation_false_gives_logits(client, hf):
    body = client.post("/score", json={"model": "ce", "queries": QUERY, "documents": DOCS[0],
                                       "use_activation": False}).json()
    logit = body["data"][0]["score"]
    assert torch.sigmoid(torch.tensor(logit)).item() == pytest.approx(hf.pair_score(QUERY, DOCS[0]), abs=1e-4)


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_sorted_by_relevance_with_top_n(client, hf, route):
    body = client.post(route, json={"model": "ce", "query": QUERY, "documents": DOCS, "top_n": 2}).json()
    assert set(body) == {"id", "model", "usage", "results"}
    assert body["id"].startswith("score-")
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    expected = sorted(((hf.pair_score(QUERY, d), i) for i, d in enumerate(DOCS)), reverse=True)[:2]
    assert [r["index"] for r in body["results"]] == [i for _, i in expected]
    for result in body["results"]:
        assert result["document"] == {"text": DOCS[result["index"]], "multi_modal": None}
        assert result["relevance_score"] == pytest.approx(hf.pair_score(QUERY, DOCS[result["index"]]), abs=1e-4)


@pytest.mark.parametrize("route,body,contains", [
    ("/score", {"model": "ce", "queries": ["a", "b"], "documents": ["c", "d", "e"]},
     "Input lengths must be either 1:1, 1:N or N:N"),
    ("/score", {"model": "ce", "queries": [], "documents": ["c"]}, "At least one text element must be given"),
    ("/score", {"model": "ce", "queries": "a", "documents": []}, "At least one text_pair element must be given"),
    ("/score", {"model": "ce", "queries": "a", "documents": "b", "max_tokens_per_query": -1},
     "max_tokens_per_query must be a non-negative integer"),
    ("/rerank", {"model": "ce", "query": "a", "documents": [{"content": [{"type": "text", "text": "x"}]}]},
     "MultiModalParam is not supported"),
])
def test_score_and_rerank_validation(client, route, body, contains):
    assert_error(client.post(route, json=body), 400, "BadRequestError", contains=contains)


def test_over_length_pair_is_400_with_vllms_message(client):
    response = client.post("/score", json={"model": "ce", "queries": "q", "documents": "word " * 400})
    assert_error(response, 400, "BadRequestError", contains="Please reduce the length of the input prompt")


def test_negative_top_n_is_a_validation_error(client):
    assert_error(client.post("/rerank", json={"model": "ce", "query": "a", "documents": ["b"], "top_n": -1}),
                 400, "BadRequestError", "body.top_n", "`top_n`: Input should be greater than or equal to 0, got -1")


@pytest.mark.parametrize("route,task", [("/score", "score"), ("/rerank", "rerank"), ("/v1/rerank", "rerank")])
def test_score_routes_on_multi_label_models_are_400_saying_why(client, route, task):
    # vLLM mounts no score routes for such a model (a bare 404); poolq says what and why.
    response = client.post(route, json={"model": "tiny", "query": "a", "documents": ["b"], "queries": "a"})
    assert_error(response, 400, "BadRequestError", "model",
                 f"Model `tiny` (BertForSequenceClassification) does not serve {task}: {task} needs a cross-encoder "
                 "with num_labels == 1; this model has 3.")
    # FastAPI's detail too: vLLM's classify/test_online.py::test_score and test_rerank check it.
    assert response.json()["detail"] == "Not Found"


@pytest.mark.parametrize("task,contains", [
    ("score", "Model `tiny` (BertForSequenceClassification) does not serve score: score needs a cross-encoder "
              "with num_labels == 1; this model has 3."),
    ("token_classify", "Serve it with --model tiny=SOURCE?task=token_classify"),
])
def test_native_job_for_a_task_the_model_does_not_serve_is_the_same_400(client, task, contains):
    body = {"task": task, "model": "tiny", "input": "x", "queries": "a", "documents": ["b"]}
    assert_error(client.post("/v1/jobs", json=body), 400, "BadRequestError", "task", contains)


def test_unknown_model_is_404_on_every_route(client):
    for route in ("/classify", "/pooling", "/score", "/rerank"):
        body = {"model": "ghost", "input": "x", "queries": "a", "documents": ["b"], "query": "a"}
        assert_error(client.post(route, json=body), 404, "NotFoundError", contains="The model `ghost` does not exist.")


# -- sync and async -----------------------------------------------------------

@pytest.mark.parametrize("route,body", [
    ("/classify", {"model": "tiny", "input": ["a", "b"], "request_id": "same1"}),
    ("/pooling", {"model": "ner", "input": "anna in berlin", "request_id": "same2"}),
    ("/score", {"model": "ce", "queries": QUERY, "documents": DOCS, "request_id": "same3"}),
    ("/rerank", {"model": "ce", "query": QUERY, "documents": DOCS, "request_id": "same4"}),
])
def test_async_job_result_equals_the_sync_body(client, route, body):
    sync = client.post(route, json=body)
    assert sync.status_code == 200, sync.text
    deferred = client.post(route, json=body, headers={"Prefer": "respond-async"})
    assert deferred.status_code == 202
    assert deferred.headers["Preference-Applied"] == "respond-async"
    job = client.wait_job(client.get(deferred.headers["Location"]).json()["id"])
    assert job["status"] == "succeeded"
    expected, got = sync.json(), job["result"]
    for body in (expected, got):  # each request got its own random id (no X-Request-Id)
        body.pop("created", None), body.pop("id")
    assert got == expected


def test_async_failure_carries_the_sync_error(client):
    body = {"model": "tiny", "input": "word " * 500}
    sync = client.post("/classify", json=body)
    assert sync.status_code == 400
    deferred = client.post("/classify", json=body, headers={"Prefer": "respond-async"})
    job = client.wait_job(deferred.json()["id"])
    assert job["status"] == "failed" and {"error": job["error"]} == sync.json()


def test_sync_request_past_its_bound_answers_202(pg_url, redis_url, deployment_env, worker_process):
    """With a zero wait bound the route hands back the job instead of hanging."""
    from app import create_app
    from app.config import Settings

    settings = Settings.from_env({**deployment_env, "POOLQ_SYNC_TIMEOUT_S": "0.000001", "POOLQ_AUTH": "off"})
    client = create_app(settings).test_client()
    response = client.post("/classify", json={"model": "tiny", "input": "x " * 100})
    assert response.status_code == 202
    assert response.headers["Location"].startswith("/v1/jobs/")
    assert "Preference-Applied" not in response.headers


@pytest.mark.parametrize("messages", [[{}], [{"role": 5, "content": "x"}], [{"content": "no role"}], ["text"]])
def test_malformed_chat_messages_are_400(client, messages):
    response = client.post("/classify", json={"model": "tiny", "messages": messages})
    assert_error(response, 400, "BadRequestError", contains="Invalid request: `messages")


@pytest.mark.parametrize("priority", [2**63, -(2**63) - 1])
def test_priority_outside_64_bits_is_400(client, priority):
    assert_error(client.post("/classify", json={"model": "tiny", "input": "x", "priority": priority}), 400)
