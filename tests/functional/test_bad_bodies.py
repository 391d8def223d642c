"""Bodies the parser cannot take get a 400 in vLLM's error shape on every POST route, never a 500.

The routes come from the app's own URL map, so a POST route added later is
covered without editing this file.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from app.batches.records import File
from app.jobs.records import Job
from app.jsonparse import MAX_DEPTH

DEEP = b'{"a":' * 5000 + b"1" + b"}" * 5000  # past any recursion limit
OVER = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)  # parses, but deeper than poolq takes
BAD = {
    "deep_object": DEEP,
    "deep_array": b"[" * 100_000 + b"]" * 100_000,
    "over_limit": b'{"model": "tiny", "input": "x", "extra": ' + OVER + b"}",
    "nan": b'{"model": "tiny", "input": "x", "truncate_prompt_tokens": NaN}',
    "huge_float": b'{"model": "tiny", "input": "x", "x": 1e999}',
    "huge_int": b'{"model": "tiny", "input": "x", "x": ' + b"9" * 10_000 + b"}",
    "bad_utf8": b'{"model": "tiny", "input": "\xff\xfe"}',
    "truncated": b'{"model": "tiny", "input": ["a",',
    "empty": b"",
}


def post_routes(app) -> list[str]:
    """Every POST rule, its path arguments filled with ids that match their shapes but exist nowhere."""
    fill = {"job_id": "00000000-0000-0000-0000-000000000000", "batch_id": "batch_" + "0" * 24,
            "file_id": "file-" + "0" * 24, "schedule_id": "sched_" + "0" * 24, "delivery_id": "whd_" + "0" * 24}
    paths = []
    for rule in app.url_map.iter_rules():
        if "POST" in rule.methods:
            paths.append(re.sub(r"<(?:\w+:)?(\w+)>", lambda m: fill.get(m.group(1), "x"), rule.rule))
    return sorted(paths)


@pytest.fixture(scope="module")
def routes(settings):
    from app import create_app

    return post_routes(create_app(settings))


def assert_vllm_error(response, status: int) -> None:
    assert response.status_code == status, (response.request.url, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == status


def count(db, record) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(record))


@pytest.mark.parametrize("kind", sorted(BAD))
def test_unparseable_bodies_get_400_on_every_post_route(client, db, routes, kind):
    jobs, files = count(db, Job), count(db, File)
    for path in routes:
        response = client.post(path, data=BAD[kind], headers={"Content-Type": "application/json"})
        assert response.status_code < 500, (path, response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert_vllm_error(response, response.status_code)
    # The routes that read a JSON body answer exactly 400.
    for path in ("/v1/jobs", "/classify", "/pooling", "/score", "/rerank", "/v1/batches", "/v1/schedules"):
        assert_vllm_error(client.post(path, data=BAD[kind], headers={"Content-Type": "application/json"}), 400)
    assert (count(db, Job), count(db, File)) == (jobs, files)  # nothing half-written


def test_bodies_within_the_depth_limit_still_work(client):
    nested = {"k": "v"}
    for _ in range(MAX_DEPTH - 4):
        nested = {"k": nested}
    # Deep but legal nesting is refused by validation (an unknown field), not by the parser.
    response = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x", "extra": nested})
    assert response.status_code in (202, 400), response.text[:300]
    if response.status_code == 400:
        assert "JSON decode error" not in response.json()["error"]["message"]


def test_broken_multipart_upload_is_a_400(client):
    cases = [
        (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{}",
         "multipart/form-data; boundary=x"),  # no closing boundary
        (b"garbage", "multipart/form-data"),  # no boundary at all
        (DEEP, "application/json"),
    ]
    for body, content_type in cases:
        assert_vllm_error(client.post("/v1/files", data=body, headers={"Content-Type": content_type}), 400)
