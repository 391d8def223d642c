"""Native job requests: a vLLM pooling request plus the task it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import TypeAdapter

from app.pooling.protocol import ClassifyRequest


class ClassifyJobRequest(ClassifyRequest):
    task: Literal["classify"]


# One entry per task; `task` picks the model.
JOB_REQUESTS: dict[str, type[ClassifyRequest]] = {
    "classify": ClassifyJobRequest,
}

JobRequest = ClassifyJobRequest
job_request_adapter = TypeAdapter(JobRequest)
