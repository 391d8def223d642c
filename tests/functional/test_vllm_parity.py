"""The last vLLM parity items, each against the vLLM source or test it follows (cited per test).

API-level where the behaviour is decided before a job exists; through the
real worker where the answer is built from a result (bytes, invocations).
"""

from __future__ import annotations

import base64
import json
import struct

import pytest
from transformers import AutoTokenizer

from test_jobs_validation import assert_error

TEXT = "anna lives in berlin"


@pytest.fixture(scope="module")
def hf_tokenizer(served_models):
    return AutoTokenizer.from_pretrained(served_models["tiny"])


# -- task: "plugin" --------------------------------------------------------------
# vllm/entrypoints/pooling/pooling/serving.py (ServingPooling) and
# tests/entrypoints/pooling/*/test_online.py::test_pooling_not_supported:
# BadRequestError whose message starts "No IOProcessor plugin installed."

@pytest.mark.parametrize("body", [{"model": "tiny", "input": "x", "task": "plugin"},
                                  {"model": "tiny", "data": {"any": "thing"}}])
def test_plugin_task_without_a_plugin_is_vllms_400(client, body):
    error = assert_error(client.post("/pooling", json=body), 400, "BadRequestError", "task")
    assert error["message"].startswith("No IOProcessor plugin installed.")


# -- cache_salt ---------------------------------------------------------------
# vllm/entrypoints/generate/base/protocol.py, validate_cache_salt, and
# tests/entrypoints/pooling/test_cache_salt_validation.py (empty refused, omitted fine).

@pytest.mark.parametrize("salt,contains", [
    ("", "non-empty string"), (5, "non-empty string"), ("a" * 129, "at most 128 characters"),
    ("bad@host", "must not contain"), ("../path", "must not contain"), ("bad\\path", "must not contain"),
    ("nul\x00", "must not contain"),
])
@pytest.mark.parametrize("route,body", [("/classify", {"model": "tiny", "input": "x"}),
                                        ("/rerank", {"model": "ce", "query": "q", "documents": ["d"]})])
def test_cache_salt_is_validated_as_vllm_validates_it(client, route, body, salt, contains):
    error = assert_error(client.post(route, json={**body, "cache_salt": salt}), 400, "BadRequestError",
                         "cache_salt", "Parameter 'cache_salt' must")
    assert contains in error["message"]


@pytest.mark.usefixtures("worker_process")
def test_a_valid_cache_salt_is_accepted(client):
    response = client.post("/classify", json={"model": "tiny", "input": "x", "cache_salt": "tenant-a_" + "s" * 119})
    assert response.status_code == 200, response.text


# -- mm_processor_kwargs / media_io_kwargs -------------------------------------------
# vllm/entrypoints/generate/base/protocol.py, validate_request_mm_kwargs: refused
# unless the server trusts them (--trust-request-mm-kwargs, which poolq has not).

@pytest.mark.parametrize("name", ["mm_processor_kwargs", "media_io_kwargs"])
def test_per_request_mm_kwargs_are_refused(client, name):
    assert_error(client.post("/pooling", json={"model": "tiny", "input": "x", name: {"num_crops": 4}}), 400,
                 "BadRequestError", name, f"Per-request {name} are disabled by default")


# -- encoding_format bytes / bytes_only -------------------------------------------
# vllm/entrypoints/pooling/pooling/serving.py (request_output_to_pooling_bytes_response),
# vllm/utils/serial_utils.py (encode_pooling_bytes, MetadataItem) and
# tests/entrypoints/pooling/pooling/test_online.py::test_bytes_embed_dtype_and_endianness.

def _floats(raw: bytes, dtype: str, endianness: str) -> list[float]:
    order = {"little": "<", "big": ">", "native": "="}[endianness]
    if dtype == "float32":
        return list(struct.unpack(f"{order}{len(raw) // 4}f", raw))
    if dtype == "float16":
        return list(struct.unpack(f"{order}{len(raw) // 2}e", raw))
    halves = struct.unpack(f"{order}{len(raw) // 2}H", raw)  # bfloat16: the top half of a float32
    return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]


@pytest.mark.usefixtures("worker_process")
@pytest.mark.parametrize("dtype,endianness", [("float32", "little"), ("float16", "big"), ("bfloat16", "native")])
def test_bytes_body_with_vllms_metadata_header(client, dtype, endianness):
    texts = [TEXT, "paris"]
    floats = client.post("/pooling", json={"model": "ner", "input": texts}).json()
    response = client.post("/pooling", json={"model": "ner", "input": texts, "encoding_format": "bytes",
                                             "embed_dtype": dtype, "endianness": endianness},
                           headers={"X-Request-Id": "bin1"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/octet-stream"
    metadata = json.loads(response.headers["metadata"])
    assert set(metadata) == {"id", "created", "model", "data", "usage"}
    assert metadata["id"] == "pooling-bin1" and metadata["model"] == "ner"
    assert metadata["usage"] == {"prompt_tokens": floats["usage"]["prompt_tokens"],
                                 "total_tokens": floats["usage"]["total_tokens"]}
    tolerance = 1e-6 if dtype == "float32" else 1e-2
    for item, expected in zip(metadata["data"], floats["data"]):
        assert set(item) == {"index", "embed_dtype", "endianness", "start", "end", "shape"}
        assert item["embed_dtype"] == dtype and item["endianness"] == endianness
        rows = expected["data"]
        assert item["shape"] == [len(rows), len(rows[0])]  # token_classify: [n_tokens][num_labels]
        got = _floats(response.content[item["start"]:item["end"]], dtype, endianness)
        assert got == pytest.approx([v for row in rows for v in row], abs=tolerance)
    assert metadata["data"][-1]["end"] == len(response.content)


@pytest.mark.usefixtures("worker_process")
def test_bytes_only_sends_no_metadata(client):
    response = client.post("/pooling", json={"model": "tiny", "input": "good", "encoding_format": "bytes_only"})
    assert response.status_code == 200 and "metadata" not in response.headers
    floats = client.post("/pooling", json={"model": "tiny", "input": "good"}).json()["data"][0]["data"]
    assert _floats(response.content, "float32", "native") == pytest.approx(floats, abs=1e-6)


# -- /tokenize and /detokenize ----------------------------------------------------
# vllm/entrypoints/serve/tokenize/protocol.py and serving.py;
# tests/entrypoints/pooling/pooling/test_online.py::test_basic (/tokenize "tokens").

@pytest.mark.parametrize("special", [True, False])
def test_tokenize_matches_the_models_tokenizer(client, hf_tokenizer, special):
    body = client.post("/tokenize", json={"model": "tiny", "prompt": TEXT, "add_special_tokens": special,
                                          "return_token_strs": True}).json()
    ids = hf_tokenizer(TEXT, add_special_tokens=special)["input_ids"]
    assert body == {"count": len(ids), "max_model_len": 128, "tokens": ids,
                    "token_strs": hf_tokenizer.convert_ids_to_tokens(ids)}


def test_tokenize_chat_renders_the_chat_template(client, hf_tokenizer):
    messages = [{"role": "user", "content": "is this good?"}]
    body = client.post("/tokenize", json={"model": "tiny", "messages": messages}).json()
    rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert body["tokens"] == hf_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert body["token_strs"] is None


def test_detokenize_round_trip(client, hf_tokenizer):
    ids = hf_tokenizer(TEXT, add_special_tokens=True)["input_ids"]
    assert client.post("/detokenize", json={"model": "tiny", "tokens": ids}).json() == \
        {"prompt": hf_tokenizer.decode(ids)}


@pytest.mark.parametrize("route,body,status,param", [
    ("/detokenize", {"model": "tiny", "tokens": [10**9]}, 400, "tokens"),
    ("/detokenize", {"model": "tiny", "tokens": [-1]}, 400, "body.tokens.0"),
    ("/tokenize", {"model": "tiny"}, 400, "body.prompt"),
    ("/tokenize", {"model": "ghost", "prompt": "x"}, 404, None),
])
def test_tokenize_errors_are_vllm_shaped(client, route, body, status, param):
    assert_error(client.post(route, json=body), status, param=param)


def test_the_api_loads_a_tokenizer_without_torch(deployment_env):
    """The API never imports torch; /tokenize reads tokenizer.json with `tokenizers`, lazily."""
    import os
    import subprocess
    import sys

    code = ("import sys, json\nfrom app import create_app\nc = create_app().test_client()\n"
            "before = 'tokenizers' in sys.modules\n"
            "r = c.post('/tokenize', json={'model': 'tiny', 'prompt': 'hello'})\n"
            "print(json.dumps({'status': r.status_code, 'lazy': not before, 'torch': 'torch' in sys.modules,"
            " 'transformers': 'transformers' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **deployment_env, "POOLQ_AUTH": "off"},
                         capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == \
        {"status": 200, "lazy": True, "torch": False, "transformers": False}


# -- /invocations and /ping (SageMaker) ----------------------------------------------
# vllm/entrypoints/sagemaker/api_router.py (invocations; ping answers as health) with
# vllm/entrypoints/pooling/__init__.py (get_pooling_invocation_types): classify,
# rerank, score, pooling, the first the body validates as;
# tests/entrypoints/pooling/pooling/test_online.py::test_invocations.

@pytest.mark.usefixtures("worker_process")
@pytest.mark.parametrize("route,body", [
    ("/classify", {"model": "tiny", "input": ["good", "bad"]}),
    ("/rerank", {"model": "ce", "query": "q", "documents": ["a", "b"]}),
    ("/score", {"model": "ce", "queries": "q", "documents": ["a", "b"]}),
    ("/pooling", {"model": "ner", "input": TEXT, "encoding_format": "float"}),
])
def test_invocations_routes_by_body_as_vllm(client, route, body):
    direct = client.post(route, json=body, headers={"X-Request-Id": "inv"}).json()
    invoked = client.post("/invocations", json=body, headers={"X-Request-Id": "inv"})
    assert invoked.status_code == 200, invoked.text
    got = invoked.json()
    direct.pop("created", None), got.pop("created", None)
    assert got == direct


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_sagemaker_ping_is_health_without_a_key(api_url, method):
    import requests

    response = requests.request(method, f"{api_url}/ping", timeout=10)  # SageMaker sends no API key
    assert response.status_code == 200 and response.content == b""


def test_invocations_without_a_matching_handler_is_400(client):
    error = assert_error(client.post("/invocations", json={"model": "ce", "nothing": 1}), 400, "BadRequestError")
    assert error["message"] == ("Cannot find suitable handler for request. Expected one of: "
                                "['ClassificationRequest', 'RerankRequest', 'ScoreRequest', 'PoolingRequest']")


# -- response ids -------------------------------------------------------------------
# vllm/entrypoints/pooling/base/serving.py (_init_ctx) and serve/engine/serving.py
# (_base_request_id): the X-Request-Id header, else a random id; the body's
# `request_id` does not name a vLLM route's response (a native job's it does).

@pytest.mark.usefixtures("worker_process")
def test_response_id_is_the_header_else_random(client):
    with_header = client.post("/classify", json={"model": "tiny", "input": "x", "request_id": "body"},
                              headers={"X-Request-Id": "hdr42"}).json()
    assert with_header["id"] == "classify-hdr42"
    without = client.post("/classify", json={"model": "tiny", "input": "x", "request_id": "body"}).json()
    assert without["id"] != "classify-body" and len(without["id"]) == len("classify-") + 16
