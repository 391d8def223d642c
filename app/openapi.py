"""The OpenAPI 3.1 document, generated from the pydantic models, and its docs page.

Request schemas come from app/pooling/protocol.py (what the routes validate
with) and response schemas from app/pooling/schemas.py, so the document
cannot drift from the code by hand-editing. Only the routes, their headers
and status codes are written out here.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from flask import Blueprint, jsonify, url_for
from pydantic import BaseModel, create_model
from pydantic.json_schema import models_json_schema

from app import tokenization
from app.batches import schemas as batch_schemas
from app.jobs.options import JobOptions
from app.pooling import protocol as p
from app.pooling import schemas as s
from app.schedules import schemas as schedule_schemas
from app.webhooks import schemas as webhook_schemas

REF = "#/components/schemas/{model}"

# A native job is the body of the route its task maps to, plus `task`
# (app/pooling/requests.py: TASK_ENDPOINTS). Each task's bodies become one
# union, and `task` picks the union.
JOB_SHAPES: dict[str, tuple[type[BaseModel], ...]] = {
    "classify": (p.ClassifyRequest, p.ClassifyChatRequest),
    "token_classify": (p.PoolingRequest, p.PoolingChatRequest),
    "score": tuple(cls for cls, _, _ in p.SCORE_SHAPES),
    "rerank": (p.RerankRequest,),
}


def _job_model(cls: type[BaseModel], task: str) -> type[BaseModel]:
    # The route's body, plus `task` and poolq's job-level fields (metadata, webhook).
    options = {name: (field.annotation, field) for name, field in JobOptions.model_fields.items()}
    return create_model(f"{cls.__name__}Job", __base__=cls, __doc__=f"`{cls.__name__}` as a `{task}` job.",
                        task=(Literal[task], ...), **options)  # type: ignore[valid-type]


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _union(*names: str) -> dict[str, Any]:
    return {"anyOf": [ref(n) for n in names]}


def _components() -> dict[str, Any]:
    job_models = {task: [_job_model(cls, task) for cls in shapes] for task, shapes in JOB_SHAPES.items()}
    requests = {cls for shapes in JOB_SHAPES.values() for cls in shapes}
    requests |= {m for models in job_models.values() for m in models}
    pairs = [(m, "validation") for m in sorted(requests, key=lambda m: m.__name__)]
    pairs += [(m, "serialization") for m in s.RESPONSE_MODELS]
    pairs += [(m, "validation") for m in tokenization.REQUEST_MODELS]
    pairs += [(m, "validation") for m in batch_schemas.REQUEST_MODELS]
    pairs += [(m, "serialization") for m in batch_schemas.RESPONSE_MODELS]
    pairs += [(m, "serialization") for m in webhook_schemas.RESPONSE_MODELS]
    pairs += [(m, "validation") for m in schedule_schemas.REQUEST_MODELS]
    pairs += [(m, "serialization") for m in schedule_schemas.RESPONSE_MODELS]
    _, top = models_json_schema(pairs, ref_template=REF)
    schemas = top["$defs"]
    # The bodies that are unions, as vLLM declares them (completion | chat, four score shapes).
    schemas["ClassifyBody"] = _union("ClassifyRequest", "ClassifyChatRequest")
    schemas["PoolingBody"] = _union("PoolingRequest", "PoolingChatRequest")
    schemas["ScoreBody"] = _union(*(cls.__name__ for cls, _, _ in p.SCORE_SHAPES))
    schemas["InvocationBody"] = _union("ClassifyBody", "RerankRequest", "ScoreBody", "PoolingBody")
    schemas["InvocationResponse"] = _union("ClassificationResponse", "RerankResponse", "ScoreResponse",
                                           "PoolingResponse")
    schemas["TokenizeBody"] = _union("TokenizeRequest", "TokenizeChatRequest")
    groups = {task: f"{''.join(w.title() for w in task.split('_'))}JobRequest" for task in job_models}
    for task, models in job_models.items():
        schemas[groups[task]] = _union(*(m.__name__ for m in models))
    schemas["JobRequest"] = {
        "oneOf": [ref(name) for name in groups.values()],
        "discriminator": {"propertyName": "task", "mapping": {t: REF.format(model=n) for t, n in groups.items()}},
    }
    return schemas


# --- parameters and responses ------------------------------------------------

PREFER = {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
          "description": "RFC 7240. `respond-async` answers 202 with the job's Location at once; "
                         "otherwise the request waits for its job up to POOLQ_SYNC_TIMEOUT_S."}
REQUEST_ID = {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "Becomes the response id (after the route's prefix); wins over the body's `request_id`."}


IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "maxLength": 255},
                   "description": "The same key and body return the same job; another body with it is a 409."}
LIST_PARAMETERS = [
    *({"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
      for name, text in (("status", "queued, running, succeeded, failed or cancelled"), ("model", "Model name."),
                         ("task", "classify, token_classify, score or rerank"),
                         ("after", "The `next_cursor` of the previous page."))),
    *({"name": name, "in": "query", "required": False, "schema": {"type": "number"}, "description": text}
      for name, text in (("created_after", "Unix time, inclusive."), ("created_before", "Unix time, exclusive."))),
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
]


def _json(schema_name: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema_name)}}, **extra}


def _header(description: str, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


RETRY_AFTER = {"Retry-After": _header("Seconds to wait before trying again.")}
ACCEPTED = _json("JobResource", "Accepted: the job is queued or running; poll its Location.", headers={
    "Location": _header("`/v1/jobs/{id}`", required=True),
    "Preference-Applied": _header("`respond-async` when the request asked for it."),
})
ERRORS = {
    "400": "Invalid request, with vLLM's message (also a job failed on its input, e.g. an over-length prompt).",
    "404": "Unknown model.",
    "401": "Missing or invalid API key (`Authorization: Bearer <key>`).",
    "409": "The job was cancelled before it finished, or the state or Idempotency-Key conflicts.",
    "413": "The body or the number of inputs is over the limit.",
    "500": "The engine failed on this job.",
    "501": "The model ships no tokenizer.json, which the API tokenizes with.",
    "429": "The caller's tenant has too many queued jobs; retry after `Retry-After`.",
    "503": "No model is served, or the service cannot take work now.",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _json("ErrorResponse", ERRORS[code], **({"headers": RETRY_AFTER} if code in ("429", "503") else {}))
            for code in ("401", *codes)}


# (path, operationId, body schema, 200 schema, summary, status codes beyond 400/404/413/503)
POOLING_ROUTES: tuple[tuple[str, str, str, str, str, tuple[str, ...]], ...] = (
    ("/classify", "classify", "ClassifyBody", "ClassificationResponse",
     "Classify texts, token ids or one chat conversation.", ()),
    ("/pooling", "pooling", "PoolingBody", "PoolingResponse",
     "Raw pooler output for the model's task (`classify` or `token_classify`).", ()),
    ("/score", "score", "ScoreBody", "ScoreResponse", "Score text pairs 1:1, 1:N or N:N.", ()),
    ("/v1/score", "score_v1", "ScoreBody", "ScoreResponse", "Same as /score.", ()),
    ("/rerank", "rerank", "RerankRequest", "RerankResponse", "Rank documents by relevance to a query.", ()),
    ("/v1/rerank", "rerank_v1", "RerankRequest", "RerankResponse", "Same as /rerank.", ()),
    ("/v2/rerank", "rerank_v2", "RerankRequest", "RerankResponse", "Same as /rerank.", ()),
    ("/invocations", "invocations", "InvocationBody", "InvocationResponse",
     "SageMaker: the body picks classify, rerank, score or pooling, as in vLLM.", ()),
)

# `encoding_format` bytes / bytes_only (app/pooling/binary.py).
BINARY_BODY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
METADATA_HEADER = {"metadata": _header("With `bytes`: JSON {id, created, model, data: [{index, embed_dtype, "
                                       "endianness, start, end, shape}], usage}.")}


def _body(schema_name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(schema_name)}}}


def _pooling_paths() -> dict[str, Any]:
    paths = {}
    for path, op_id, body, response, summary, extra in POOLING_ROUTES:
        ok = _json(response, "The vLLM response body.")
        if path in ("/pooling", "/invocations"):
            ok["content"].update(BINARY_BODY)
            ok["headers"] = METADATA_HEADER
        paths[path] = {"post": {
            "tags": ["pooling"], "operationId": op_id, "summary": summary,
            # vLLM 0.33 logs "moved" warnings for these aliases.
            "deprecated": path in ("/v1/score", "/v1/rerank"),
            "parameters": [PREFER, REQUEST_ID],
            "requestBody": _body(body),
            "responses": {"200": ok, "202": ACCEPTED,
                          **_errors("400", "404", "409", "413", "429", "500", *extra, "503")},
        }}
    for path, op_id, body, response, summary in TOKENIZE_ROUTES:
        paths[path] = {"post": {
            "tags": ["pooling"], "operationId": op_id, "summary": summary, "requestBody": _body(body),
            "responses": {"200": _json(response, "vLLM's response body."), **_errors("400", "404", "413", "501")},
        }}
    return paths


TOKENIZE_ROUTES = (
    ("/tokenize", "tokenize", "TokenizeBody", "TokenizeResponse",
     "Token ids of a prompt or of chat messages, with the model's tokenizer (no job)."),
    ("/detokenize", "detokenize", "DetokenizeRequest", "DetokenizeResponse", "The text of token ids (no job)."),
)


def _other_paths() -> dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    return {
        "/v1/jobs": {"post": {
            "tags": ["jobs"], "operationId": "submitJob", "summary": "Submit any pooling task as a job.",
            "parameters": [REQUEST_ID, IDEMPOTENCY_KEY], "requestBody": _body("JobRequest"),
            "responses": {"202": ACCEPTED, **_errors("400", "404", "409", "413", "429", "503")},
        }, "get": {
            "tags": ["jobs"], "operationId": "listJobs", "summary": "The caller's jobs, newest first.",
            "parameters": LIST_PARAMETERS,
            "responses": {"200": _json("JobList", "A page of jobs (without results)."), **_errors("400")},
        }},
        "/v1/jobs/{job_id}": {"get": {
            "tags": ["jobs"], "operationId": "getJob", "summary": "A job, with its result once succeeded.",
            "parameters": [job_id],
            "responses": {"200": _json("JobResource", "The job."), **_errors("404")},
        }, "delete": {
            "tags": ["jobs"], "operationId": "deleteJob", "summary": "Delete a finished job and its results.",
            "parameters": [job_id],
            "responses": {"200": _json("JobDeleted", "Deleted."), **_errors("404", "409")},
        }},
        "/v1/jobs/{job_id}/cancel": {"post": {
            "tags": ["jobs"], "operationId": "cancelJob", "summary": "Cancel a queued or running job.",
            "parameters": [job_id],
            "responses": {"200": _json("JobResource", "The cancelled job."), **_errors("404", "409")},
        }},
        "/health": {"get": {"tags": ["system"], "operationId": "health", "summary": "Liveness.", "security": [],
                            "responses": {"200": _json("Health", "Alive.")}}},
        "/ping": {method: {"tags": ["system"], "operationId": f"ping_{method}", "security": [],
                           "summary": "SageMaker's health check (as /health, no body).",
                           "responses": {"200": {"description": "Alive."}}} for method in ("get", "post")},
        "/ready": {"get": {"tags": ["system"], "operationId": "ready", "summary": "Readiness: database and broker.",
                           "security": [],
                           "responses": {"200": _json("Readiness", "Ready."),
                                         "503": _json("Readiness", "Not ready.", headers=RETRY_AFTER)}}},
        "/v1/models": {"get": {"tags": ["system"], "operationId": "listModels", "summary": "The served models.",
                               "responses": {"200": _json("ModelList", "The served models."), **_errors()}}},
        "/metrics": {"get": {"tags": ["system"], "operationId": "metrics", "security": [],
                             "summary": "Prometheus metrics: requests, accepted jobs, the backlog by model.",
                             "responses": {"200": {"description": "Prometheus text format.", "content": {
                                 "text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"tags": ["system"], "operationId": "openapi", "summary": "This document.",
                                  "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1.", "content": {
                                      "application/json": {"schema": {"type": "object"}}}}}}},
        "/docs": {"get": {"tags": ["system"], "operationId": "docs", "summary": "Interactive docs (Swagger UI).",
                          "security": [],
                          "responses": {"200": {"description": "An HTML page.", "content": {
                              "text/html": {"schema": {"type": "string"}}}}}}},
    }


@functools.cache
def _document() -> dict[str, Any]:
    try:
        version = metadata.version("poolq")
    except metadata.PackageNotFoundError:  # running from a checkout that is not installed
        version = "0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "poolq", "version": version,
                 "description": "vLLM 0.33's pooling protocol over a job queue, synchronous or asynchronous."},
        "tags": [{"name": "pooling", "description": "vLLM-compatible routes."},
                 {"name": "jobs", "description": "poolq's native jobs."},
                 {"name": "system", "description": "Health, readiness, models, this document."},
                 batch_schemas.OPENAPI_TAG, webhook_schemas.OPENAPI_TAG, schedule_schemas.OPENAPI_TAG],
        "paths": {**_pooling_paths(), **_other_paths(), **batch_schemas.openapi_paths(_json, _errors),
                  **webhook_schemas.openapi_paths(_json, _errors), **schedule_schemas.openapi_paths(_json, _errors)},
        "components": {"schemas": _components(), "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "An API key from `poolq keys create` (not needed when POOLQ_AUTH=off)."}}},
        "security": [{"bearer": []}],
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy: callers (tests, tools) may modify it."""
    return copy.deepcopy(_document())


def _swagger_ui_dir() -> str:
    """Swagger UI's files, as the `swagger-ui-py` package installs them (no CDN: /docs works offline).

    The package's directory is found without importing it: its __init__
    wires up web frameworks poolq does not use.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed; it is one of poolq's dependencies")
    return str(Path(spec.submodule_search_locations[0]) / "static")


bp = Blueprint("openapi", __name__, static_folder=_swagger_ui_dir(), static_url_path="/docs/assets")

# Every URL is this server's own. validatorUrl null: Swagger UI would
# otherwise fetch a badge from validator.swagger.io.
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>poolq API</title>
  <link rel="stylesheet" href="{css}">
  <link rel="icon" type="image/png" href="{icon}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{js}"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", validatorUrl: null}});
  </script>
</body>
</html>
"""


@bp.get("/openapi.json")
def spec():
    return jsonify(_document())


@bp.get("/docs")
def docs():
    def asset(name: str) -> str:
        return url_for("openapi.static", filename=name)

    page = DOCS_PAGE.format(css=asset("swagger-ui.css"), js=asset("swagger-ui-bundle.js"),
                            icon=asset("favicon-32x32.png"), spec=url_for("openapi.spec"))
    return page, 200, {"Content-Type": "text/html; charset=utf-8"}
