"""vLLM's binary pooling responses: `encoding_format` `bytes` and `bytes_only`.

vLLM (pooling/pooling/serving.py, request_output_to_pooling_bytes_response;
utils/serial_utils.py, encode_pooling_bytes) answers application/octet-stream:
each prompt's tensor in `embed_dtype` and byte order, concatenated in input
order. `bytes` adds a `metadata` header holding JSON
{"id", "created", "model", "data": [{"index", "embed_dtype", "endianness",
"start", "end", "shape"}], "usage": {"prompt_tokens", "total_tokens"}};
`bytes_only` sends the body alone (the client knows the shapes).

The worker stores every result as JSON, so a bytes request runs as base64 in
the same dtype and byte order, and the synchronous route turns it into the
binary body here, without torch. A job fetched later (`GET /v1/jobs/{id}`)
keeps the base64 form: a job resource is JSON.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from flask import Response

BINARY_FORMATS = ("bytes", "bytes_only")
ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8_e4m3": 1, "fp8_e5m2": 1}


def binary_response(result_json: str | bytes, request: dict[str, Any], num_labels: int) -> Response:
    result = json.loads(result_json)
    dtype = request.get("embed_dtype", "float32")
    endianness = request.get("endianness", "native")
    chunks, items, offset = [], [], 0
    for entry in result["data"]:
        raw = base64.b64decode(entry["data"])
        values = len(raw) // ITEM_BYTES[dtype]
        # classify: [num_labels]; token_classify: [n_tokens][num_labels] (vLLM's tensor shapes).
        shape = [values // num_labels, num_labels] if request["task"] == "token_classify" else [values]
        items.append({"index": entry["index"], "embed_dtype": dtype, "endianness": endianness,
                      "start": offset, "end": offset + len(raw), "shape": shape})
        chunks.append(raw)
        offset += len(raw)
    response = Response(b"".join(chunks), mimetype="application/octet-stream")
    if request["binary_response"] == "bytes":
        usage = result["usage"]
        # json.dumps escapes non-ASCII, so a request id in any script stays a valid header value.
        response.headers["metadata"] = json.dumps({
            "id": result["id"], "created": result["created"], "model": result["model"], "data": items,
            "usage": {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["total_tokens"]}})
    return response
