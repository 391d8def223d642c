"""Bad input gets vLLM's error shape and a 4xx, and nothing is written."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, func, select

from app.jobs.records import Job


def assert_error(response, status: int, type_: str | None = None, param: str | None = None, contains: str = ""):
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    if type_ is not None:
        assert error["type"] == type_
    if param is not None:
        assert error["param"] == param
    assert contains in error["message"]
    return error


@pytest.fixture
def job_count(pg_url):
    engine = create_engine(pg_url)

    def count() -> int:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Job))

    yield count
    engine.dispose()


BAD_BODIES = [
    ({"task": "classify", "model": "nope", "input": "x"}, 404, "NotFoundError", None, "The model `nope` does not exist."),
    ({"task": "translate", "model": "tiny", "input": "x"}, 400, "BadRequestError", "task", "Unsupported task: 'translate'"),
    ({"model": "tiny", "input": "x"}, 400, "BadRequestError", "task", "Unsupported task: None"),
    ({"task": "classify", "model": "tiny", "input": []}, 400, "BadRequestError", "input", "You must pass at least one prompt"),
    # Validation errors: BadRequestError, one readable sentence per field (not pydantic's dump).
    ({"task": "classify", "model": "tiny", "input": ["a", 3]}, 400, "BadRequestError", "body.input",
     "Invalid request: `input` is none of its accepted forms (got ['a', 3])"),
    ({"task": "classify", "model": "tiny", "input": [None]}, 400, "BadRequestError", "body.input",
     "`input` is none of its accepted forms"),
    ({"task": "classify", "model": "tiny"}, 400, "BadRequestError", "body.input",
     "Invalid request: `input` is required [missing]."),
    ({"task": "classify", "model": "tiny", "input": "x", "use_activation": "yes"}, 400, "BadRequestError",
     "body.use_activation", "`use_activation`: Input should be a valid boolean, got 'yes' [bool_type]"),
    ({"task": "classify", "model": "tiny", "input": "x", "truncate_prompt_tokens": -2}, 400, "BadRequestError",
     "body.truncate_prompt_tokens", "`truncate_prompt_tokens`: Input should be greater than or equal to -1, got -2"),
    ({"task": "classify", "model": "tiny", "input": "x", "truncate_prompt_tokens": 100000}, 400, "BadRequestError",
     "truncate_prompt_tokens", "Please request a smaller truncation size."),
    (["not", "an", "object"], 400, "BadRequestError", None, "JSON object"),
]


@pytest.mark.parametrize("body,status,type_,param,contains", BAD_BODIES)
def test_bad_submissions_are_rejected_and_write_nothing(client, job_count, body, status, type_, param, contains):
    before = job_count()
    assert_error(client.post("/v1/jobs", json=body), status, type_, param, contains)
    assert job_count() == before


def test_malformed_json(client, job_count):
    before = job_count()
    response = client.post("/v1/jobs", data=b'{"task": "classify", ', headers={"Content-Type": "application/json"})
    assert_error(response, 400, "BadRequestError", "body", "The body is not valid JSON: ")
    assert job_count() == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/jobs", data=b'{"task": "classify", "input": "x"}', headers=headers)
    assert_error(response, 400, "BadRequestError", "Content-Type", "Only 'application/json' is allowed")


def test_unknown_job_is_404(client):
    assert_error(client.get(f"/v1/jobs/{uuid.uuid4()}"), 404, "NotFoundError")
    assert_error(client.get("/v1/jobs/not-a-uuid"), 404, "NotFoundError")


def test_unknown_route_is_404_in_both_shapes(client):
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["detail"] == "Not Found"
    assert response.json()["error"]["code"] == 404


def test_oversize_body_is_413(deployment_env):
    from app import create_app
    from app.config import Settings

    app = create_app(Settings.from_env({**deployment_env, "POOLQ_MAX_REQUEST_BYTES": "1000", "POOLQ_AUTH": "off"}))
    response = app.test_client().post("/v1/jobs", data="x" * 1010, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json["error"]["code"] == 413


def test_too_many_items_is_413(deployment_env):
    from app import create_app
    from app.config import Settings

    client = create_app(Settings.from_env({**deployment_env, "POOLQ_MAX_ITEMS_PER_REQUEST": "3", "POOLQ_AUTH": "off"})).test_client()
    response = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": ["a"] * 4})
    assert response.status_code == 413 and response.json["error"]["param"] == "input"
    response = client.post("/rerank", json={"model": "ce", "query": "q", "documents": ["d"] * 4})
    assert response.status_code == 413 and response.json["error"]["param"] == "documents"


def test_backlog_past_the_limit_is_503_with_retry_after(deployment_env, job_count, pg_url):
    from sqlalchemy import create_engine, delete, insert

    from app import create_app
    from app.config import Settings
    from app.db.base import utcnow
    from app.tenants.records import DEFAULT_TENANT_ID

    backlog_id = uuid.uuid4()  # a queued job no message was sent for: the backlog
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(insert(Job).values(id=backlog_id, tenant_id=DEFAULT_TENANT_ID, task="classify", model="tiny",
                                        status="queued",
                                        request={"input": ["x"]}, num_inputs=1, attempts=0, created_at=utcnow()))
    try:
        before = job_count()
        client = create_app(Settings.from_env({**deployment_env, "POOLQ_MAX_QUEUED_JOBS": "1", "POOLQ_AUTH": "off"})).test_client()
        response = client.post("/v1/jobs", json={"task": "classify", "model": "tiny", "input": "x"})
        assert response.status_code == 503
        assert response.headers["Retry-After"] and response.json["error"]["type"] == "ServiceUnavailable"
        assert job_count() == before
    finally:
        with engine.begin() as conn:
            conn.execute(delete(Job).where(Job.id == backlog_id))
        engine.dispose()


def test_database_down_is_503_not_500(tmp_path, redis_url, served_models):
    from app import create_app
    from app.config import Settings

    settings = Settings.from_env({"POOLQ_HOME": str(tmp_path), "POOLQ_BROKER_URL": redis_url,
                                  "POOLQ_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none",
                                  "POOLQ_MODELS": f"tiny={served_models['tiny']}", "POOLQ_AUTH": "off"})
    response = create_app(settings).test_client().post("/v1/jobs", json={"task": "classify", "input": "x"})
    assert response.status_code == 503 and response.headers["Retry-After"]
