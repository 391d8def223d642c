"""Running a chunk of batch lines through the engine, many lines per engine call.

Lines that share an engine call's parameters are merged into one call (all
their prompts, or all their pairs), so a chunk of short requests fills the
micro-batcher like one bulk job instead of trickling in line by line; the
outputs are split back per line and shaped exactly as the sync routes shape
them. If a merged call fails (one line's prompt is too long, say), its lines
run one by one so only the bad line fails. Chat lines always run alone.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.batches.lines import error_line, ok_line
from app.errors import error_body
from app.jobs.services import ClaimedJob
from app.pooling import responses
from workers import execution

log = logging.getLogger(__name__)


BULK_PRIORITY = 1


@dataclass
class _Plan:
    key: str  # lines with the same key share one engine call
    items: list  # prompts, or (query, document) pairs
    call: Callable[[Any, list], list]
    finish: Callable[[list], dict[str, Any]]


def _plan(model: str, req: dict[str, Any]) -> _Plan | None:
    endpoint = req.get("endpoint")
    if "messages" in req:
        return None
    # Batch chunks always run in the engine's bulk lane, behind interactive jobs.
    common = {**execution._common(req), "priority": BULK_PRIORITY}
    special = req.get("add_special_tokens", True)
    rid = req["request_id"]
    if endpoint == "classify":
        return _Plan(json.dumps(["classify", common, special], sort_keys=True), req["input"],
                     lambda engine, items: engine.classify(items, add_special_tokens=special, **common),
                     lambda outs: responses.classification(rid, model, outs))
    if endpoint == "pooling":
        task = req["task"]
        aggregation = req.get("aggregation_strategy") if task == "token_classify" else None
        return _Plan(json.dumps(["pooling", task, common, special, aggregation], sort_keys=True), req["input"],
                     lambda engine, items: engine.encode(items, pooling_task=task, add_special_tokens=special,
                                                         aggregation=aggregation, **common),
                     lambda outs: responses.pooling(rid, model, outs, _encoded(req, outs)))
    kwargs = {**execution._score_kwargs(req), "priority": BULK_PRIORITY}
    key = json.dumps(["score", kwargs], sort_keys=True)

    def call(engine, pairs):
        return engine.score([q for q, _ in pairs], [d for _, d in pairs], **kwargs)

    if endpoint == "score":
        data_1, data_2 = req["data_1"], req["data_2"]
        pairs = list(zip(data_1 * len(data_2) if len(data_1) == 1 else data_1, data_2))
        return _Plan(key, pairs, call, lambda outs: responses.score(rid, model, outs))
    documents = req["documents"]
    return _Plan(key, [(req["query"], d) for d in documents], call,
                 lambda outs: responses.rerank(rid, model, documents, outs, req.get("top_n", 0)))


def _encoded(req: dict[str, Any], outputs: list) -> list:
    if req.get("encoding_format") == "base64":
        return [execution.encode_base64(o.data, req.get("embed_dtype", "float32"), req.get("endianness", "native"))
                for o in outputs]
    return [o.data for o in outputs]


def run_lines(engine, model: str, lines: list) -> list[tuple[int, bool, str]]:
    """[[line_no, custom_id, request], ...] -> [(line_no, ok, output line)], in the same order."""
    results: dict[int, tuple[bool, str]] = {}
    groups: dict[str, list[tuple[list, _Plan]]] = {}
    alone: list[list] = []
    for line in lines:
        plan = _plan(model, line[2])
        if plan is None:
            alone.append(line)
        else:
            groups.setdefault(plan.key, []).append((line, plan))
    for members in groups.values():
        items = [item for _, plan in members for item in plan.items]
        try:
            outputs = members[0][1].call(engine, items)
        except Exception:  # noqa: BLE001 - each line gets its own verdict below
            alone.extend(line for line, _ in members)
            continue
        start = 0
        for line, plan in members:
            part = outputs[start:start + len(plan.items)]
            start += len(plan.items)
            results[line[0]] = (True, ok_line(line[1], plan.finish(part)))
    for line in alone:
        results[line[0]] = _run_one(engine, model, line)
    return [(line[0], *results[line[0]]) for line in lines]


def _run_one(engine, model: str, line: list) -> tuple[bool, str]:
    line_no, custom_id, req = line
    job = ClaimedJob(uuid.uuid4(), req.get("task", ""), model, req, 1)
    try:
        body, _ = execution.run(engine, job, lambda: False)
        return True, ok_line(custom_id, body)
    except ValueError as exc:  # PoolingInputError: the line's input, a 400 as the route answers
        return False, error_line(custom_id, 400, error_body(str(exc), "BadRequestError",
                                                            getattr(exc, "parameter", None), 400))
    except Exception as exc:
        log.exception("batch line %d failed in the engine", line_no)
        return False, error_line(custom_id, 500, error_body(f"The engine failed on this line: {type(exc).__name__}",
                                                            "InternalServerError", None, 500))
