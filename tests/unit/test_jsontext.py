"""app.jsontext: JSON text for stored requests, results and batch lines."""

from __future__ import annotations

import json

from app.jsontext import dumps


def test_what_it_writes_reads_back_the_same():
    value = {"id": "classify-1", "data": [{"index": 0, "label": "pos", "probs": [0.1, 0.9000000000000001]}],
             "text": "naïve 日本 \u0000 \"quoted\" \\", "nested": {"a": [None, True, False, -3, 1e-12]},
             "big": 2**63 - 1}
    text = dumps(value)
    assert isinstance(text, str)
    assert json.loads(text) == value
    assert ": " not in text.replace('"quoted\\"', "")  # compact, as vLLM's own JSON


def test_what_orjson_refuses_is_written_as_json_dumps_writes_it():
    for value in ({"n": 2**70}, {"s": "\ud800 lone surrogate"}, {"n": -(2**64)}):
        text = dumps(value)
        assert text == json.dumps(value)
        assert json.loads(text) == value


def test_keys_that_are_not_strings_are_written_as_strings():
    assert json.loads(dumps({1: "a", 2.5: "b", None: "c"})) == json.loads(json.dumps({1: "a", 2.5: "b", None: "c"}))


def test_nan_and_infinity_are_written_as_null_which_postgres_takes():
    assert json.loads(dumps({"x": [float("nan"), float("inf")]})) == {"x": [None, None]}
