"""Request models of vLLM 0.33's pooling protocol (reference §1).

Like vLLM's `OpenAIBaseModel`, unknown fields are accepted and ignored, so a
client written for vLLM can send what it sends there.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

TokenIds = list[StrictInt]
PromptInput = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]


def random_request_id() -> str:
    """vLLM's `random_uuid()`: 16 lowercase hex characters."""
    return secrets.token_hex(8)


class PoolingBase(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    user: StrictStr | None = None
    truncate_prompt_tokens: Annotated[StrictInt, Field(ge=-1)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    request_id: StrictStr | None = Field(default=None, max_length=128)
    priority: StrictInt = 0


class ClassifyRequest(PoolingBase):
    """`POST /classify`, completion form."""

    input: PromptInput
    add_special_tokens: StrictBool = True
    use_activation: StrictBool | None = None


def prompt_count(value: PromptInput) -> int:
    """How many prompts an `input` holds: a string or one id list is one."""
    if isinstance(value, str):
        return 1
    if value and isinstance(value[0], int):
        return 1
    return len(value)


def as_prompt_list(value: PromptInput) -> list[str] | list[list[int]]:
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [value]  # one prompt given as token ids
    return list(value)
