"""What the scheduler runs: a job or a batch chunk, turned into prepared units and back.

`prepare_job` / `prepare_chunk` run on a preparation thread: they tokenize
and validate (an input problem raises ValueError, vLLM's 400, before
anything reaches the device) and return the units to schedule with a
`finish` that turns the units' outputs into what is stored: a job's vLLM
response body, or a chunk's output lines.

A chunk's lines that share an engine call's parameters become one unit per
STREAM_LINES lines (all their prompts, or all their pairs), so a chunk of
one-text lines fills batches like one bulk job and its first lines run while
the rest tokenize; the outputs are split back per line and shaped
exactly as the sync routes shape them. If a merged group fails validation,
its lines are prepared one by one so only the bad line fails. Chat lines are
always prepared alone.
"""
from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from app.batches.lines import error_line, ok_line
from app.errors import error_body
from app.pooling import responses

# Batch chunks run in the bulk lane, behind interactive jobs (vLLM: priority > 0).
BULK_PRIORITY = 1


@dataclass
class Plan:
    """Units to schedule (models.prepared.Prepared) and how their outputs become the result."""

    units: list
    finish: Callable[[list[list]], Any]  # outputs per unit, in unit order -> result
    # A big job's further units, in order, each ready once tokenized (the engine tokenizes
    # them in parallel meanwhile): the device starts on the first while the rest are made.
    more: Iterator | None = None


def priority_of(request: dict[str, Any]) -> int:
    return request.get("priority", 0) or 0


# -- jobs -------------------------------------------------------------------

# Past this many prompts (one tokenizer chunk, models.engine.CHUNK) a job's units are made a chunk at a time
# (engine.stream_*), a preparation turn each: its first chunk runs while the rest are
# tokenized, and another tenant's job waits for one chunk's tokenizing, not the job's.
STREAM_AFTER = 256


def prepare_job(engine, model: str, request: dict[str, Any]) -> Plan:
    """The units of one job; the result is the response body the matching vLLM route answers with.
    A bad input raises ValueError here, or (a big job) from `more` when its chunk is reached."""
    streamed = _stream(engine, model, request)
    if streamed is not None:
        return streamed
    unit, shape = _plan(engine, model, request)
    return Plan([unit], lambda outputs: shape(outputs[0]))


def _stream(engine, model: str, req: dict[str, Any]) -> Plan | None:
    """A big job of plain prompts (classify, or pooling without entity offsets) as a stream of units."""
    endpoint, prompts = req.get("endpoint", "classify"), req.get("input")
    if endpoint not in ("classify", "pooling") or not isinstance(prompts, list) or len(prompts) <= STREAM_AFTER:
        return None
    rid, special = req["request_id"], req.get("add_special_tokens", True)
    if endpoint == "classify":
        units = engine.stream_classify(prompts, add_special_tokens=special, **_common(req))

        def shape(outs):
            return responses.classification(rid, model, outs)
    else:
        task = req["task"]
        if task == "token_classify" and req.get("aggregation_strategy"):
            return None
        units = engine.stream_encode(prompts, pooling_task=task, add_special_tokens=special, **_common(req))

        def shape(outs):
            return responses.pooling(rid, model, outs, _encoded(req, outs))
    first = next(units)  # the first chunk's errors are the caller's at once, as an unstreamed job's
    return Plan([first], lambda outputs: shape([o for unit in outputs for o in unit]), units)


def _plan(engine, model: str, req: dict[str, Any]):
    endpoint, rid = req.get("endpoint", "classify"), req["request_id"]
    if endpoint in ("classify", "pooling"):
        prompts, special = _prompts(engine, req)
        if endpoint == "classify":
            return (engine.prepare_classify(prompts, add_special_tokens=special, **_common(req)),
                    lambda outs: responses.classification(rid, model, outs))
        task = req["task"]
        aggregation = req.get("aggregation_strategy") if task == "token_classify" else None
        unit = engine.prepare_encode(prompts, pooling_task=task, add_special_tokens=special,
                                     aggregation=aggregation, **_common(req))
        return unit, lambda outs: responses.pooling(rid, model, outs, _encoded(req, outs))
    kwargs = _score_kwargs(req)
    if endpoint == "score":
        data_1, data_2 = req["data_1"], req["data_2"]
        queries = data_1 * len(data_2) if len(data_1) == 1 else data_1
        return engine.prepare_score(queries, data_2, **kwargs), lambda outs: responses.score(rid, model, outs)
    documents = req["documents"]
    return (engine.prepare_score([req["query"]], documents, **kwargs),
            lambda outs: responses.rerank(rid, model, documents, outs, req.get("top_n", 0)))


def _prompts(engine, req: dict[str, Any]) -> tuple[list, bool]:
    """The prompts to run and whether to add special tokens (chat renders its own)."""
    if "messages" not in req:
        return req["input"], req.get("add_special_tokens", True)
    from jinja2.exceptions import TemplateError

    try:
        prompt = engine.tokenizer.apply_chat_template(
            req["messages"], tokenize=False,
            add_generation_prompt=req.get("add_generation_prompt", False),
            continue_final_message=req.get("continue_final_message", False),
            **(req.get("chat_template_kwargs") or {}))
    except TemplateError as exc:
        raise ValueError(f"The chat template failed on these messages: {exc}") from None
    return [prompt], req.get("add_special_tokens", False)


def _common(req: dict[str, Any]) -> dict[str, Any]:
    return {"use_activation": req.get("use_activation"),
            "truncate_prompt_tokens": req.get("truncate_prompt_tokens"),
            "truncation_side": req.get("truncation_side")}


def _score_kwargs(req: dict[str, Any]) -> dict[str, Any]:
    return {"use_activation": req.get("use_activation"),
            "truncate_prompt_tokens": req.get("truncate_prompt_tokens"),
            "max_tokens_per_query": req.get("max_tokens_per_query", 0),
            "max_tokens_per_doc": req.get("max_tokens_per_doc", 0),
            "chat_template_kwargs": req.get("chat_template_kwargs")}


def _encoded(req: dict[str, Any], outputs: list) -> list:
    if req.get("encoding_format") == "base64":
        return [encode_base64(o.data, req.get("embed_dtype", "float32"), req.get("endianness", "native"))
                for o in outputs]
    return [o.data for o in outputs]


def encode_base64(data, embed_dtype: str, endianness: str) -> str:
    """vLLM's base64 encoding: the flattened tensor's raw bytes in `embed_dtype`."""
    import torch

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[embed_dtype]
    tensor = torch.tensor(data, dtype=torch.float32).flatten().to(dtype)
    raw = tensor.view(torch.uint8).numpy().reshape(tensor.numel(), tensor.element_size())
    if endianness != "native" and endianness != sys.byteorder:
        raw = raw[:, ::-1]
    return base64.b64encode(raw.tobytes()).decode("ascii")


# -- batch chunks -----------------------------------------------------------

# A chunk's lines go to the engine this many at a time once it has more: its first lines
# run while the rest tokenize. Whole, a 500-line chunk was tokenized before its first
# forward (~0.18 s of wall time on 2 busy vCPUs), the device idle meanwhile at a batch's start.
# A piece is also what is sorted by length (models/prepared.py), and the collator's window
# holds slices of consecutive sorted rows: the more rows a piece sorts, the narrower the
# lengths in a window and the less padding. As many as a big job's tokenizer chunk
# (models.engine.CHUNK): at 128 a 5,000-line batch ran 1.235 padded tokens per real one
# against the same texts' 1.165 as one job, 6% more work on the device.
STREAM_LINES = 256


def prepare_chunk(engine, model: str, lines: list) -> tuple[Plan, list[tuple[int, bool, str]]]:
    """[[line_no, custom_id, request], ...] -> the units to run, and the lines answered without
    running (their input was refused; a streamed chunk adds to that list as its pieces are
    made). The result of `finish` is [(line_no, ok, output line)] for the lines that ran.

    Lines that share an engine call's parameters are merged, STREAM_LINES at a time; the
    first piece is made here and the others by `Plan.more`, one unit per turn."""
    groups: dict[str, list] = {}
    alone: list = []
    for line in lines:
        req = line[2]
        if "messages" in req:
            alone.append(line)
        else:
            groups.setdefault(_group_key(req), []).append(line)
    pieces = [("group", members[start:start + STREAM_LINES])
              for members in groups.values() for start in range(0, len(members), STREAM_LINES)]
    pieces += [("alone", [line]) for line in alone]
    shapers: list = []
    answered: list[tuple[int, bool, str]] = []

    def make(kind: str, members: list) -> list:
        """The units of one piece, their shapers appended in the same order."""
        if kind == "group":
            try:
                return [_merged_unit(engine, model, members, shapers)]
            except ValueError:
                pass  # each line gets its own verdict below
        units = []
        for line in members:
            try:
                unit, shape = _plan(engine, model, line[2])
            except ValueError as exc:
                answered.append((line[0], False, _refused(line[1], exc)))
                continue
            units.append(unit)
            shapers.append(lambda outs, line=line, shape=shape: [(line[0], True, ok_line(line[1], shape(outs)))])
        return units

    units: list = []
    while pieces and not units:
        units = make(*pieces.pop(0))

    def rest() -> Iterator:
        for piece in pieces:
            yield from make(*piece)

    def finish(outputs: list[list]) -> list[tuple[int, bool, str]]:
        return [row for shape, outs in zip(shapers, outputs) for row in shape(outs)]

    return Plan(units, finish, rest() if pieces else None), answered


def chunk_error_lines(lines: list, exc: BaseException) -> list[tuple[int, bool, str]]:
    """Every line of a chunk, failed by an engine error (not its input)."""
    body = error_body(f"The engine failed on this line: {type(exc).__name__}", "InternalServerError", None, 500)
    return [(line[0], False, error_line(line[1], 500, body)) for line in lines]


def _group_key(req: dict[str, Any]) -> tuple | str:
    """Lines with the same key share an engine call's parameters: a tuple of them where all are
    scalars (json.dumps for every line was 5 us of a chunk's preparation a line), else JSON
    (a score's chat template arguments)."""
    endpoint = req.get("endpoint")
    if endpoint in ("classify", "pooling"):
        task = req.get("task") if endpoint == "pooling" else None
        aggregation = req.get("aggregation_strategy") if task == "token_classify" else None
        key = (endpoint, task, *_common(req).values(), req.get("add_special_tokens", True), aggregation)
        try:
            hash(key)
            return key
        except TypeError:
            return json.dumps(key, sort_keys=True)
    return json.dumps(["score", _score_kwargs(req)], sort_keys=True)


def _merged_unit(engine, model: str, members: list, shapers: list):
    req = members[0][2]
    endpoint = req.get("endpoint")
    if endpoint in ("classify", "pooling"):
        items = [p for line in members for p in line[2]["input"]]
        special = req.get("add_special_tokens", True)
        if endpoint == "classify":
            unit = engine.prepare_classify(items, add_special_tokens=special, **_common(req))
        else:
            task = req["task"]
            unit = engine.prepare_encode(items, pooling_task=task, add_special_tokens=special,
                                         aggregation=req.get("aggregation_strategy") if task == "token_classify"
                                         else None, **_common(req))
        sizes = [len(line[2]["input"]) for line in members]
    else:
        pairs = [pair for line in members for pair in _pairs(line[2])]
        unit = engine.prepare_score([q for q, _ in pairs], [d for _, d in pairs], **_score_kwargs(req))
        sizes = [len(_pairs(line[2])) for line in members]

    def shape(outs: list) -> list[tuple[int, bool, str]]:
        rows, start = [], 0
        for line, n in zip(members, sizes):
            rows.append((line[0], True, ok_line(line[1], _shape_line(model, line[2], outs[start:start + n]))))
            start += n
        return rows

    shapers.append(shape)
    return unit


def _pairs(req: dict[str, Any]) -> list[tuple[str, Any]]:
    if req.get("endpoint") == "rerank":
        return [(req["query"], d) for d in req["documents"]]
    data_1, data_2 = req["data_1"], req["data_2"]
    return list(zip(data_1 * len(data_2) if len(data_1) == 1 else data_1, data_2))


def _shape_line(model: str, req: dict[str, Any], outs: list) -> dict[str, Any]:
    endpoint, rid = req.get("endpoint"), req["request_id"]
    if endpoint == "classify":
        return responses.classification(rid, model, outs)
    if endpoint == "pooling":
        return responses.pooling(rid, model, outs, _encoded(req, outs))
    if endpoint == "score":
        return responses.score(rid, model, outs)
    return responses.rerank(rid, model, req["documents"], outs, req.get("top_n", 0))


def _refused(custom_id: str, exc: ValueError) -> str:
    """A line whose input the engine refused: a 400, as the route answers."""
    return error_line(custom_id, 400, error_body(str(exc), "BadRequestError", getattr(exc, "parameter", None), 400))
