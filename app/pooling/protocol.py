"""Request models of vLLM 0.33's pooling protocol (reference §1).

Like vLLM's `OpenAIBaseModel`, unknown fields are accepted and ignored, so a
client written for vLLM can send what it sends there.
"""

from __future__ import annotations

import random
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

TokenIds = list[StrictInt]
PromptInput = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
PoolingTask = Literal["embed", "classify", "token_embed", "token_classify", "plugin", "embed&token_classify"]
Aggregation = Literal["none", "simple", "first", "average", "max"]


def random_request_id() -> str:
    """vLLM's `random_uuid()`: 16 lowercase hex characters.

    Ids need to be distinct, not secret. `secrets` reads os.urandom, a system call that lets go
    of the GIL and must take it back: a batch chunk's output takes two ids per line, and in a busy
    worker those waits for the GIL were a third of the samples of the thread that builds the
    lines. The module's generator is seeded from urandom and re-seeded after a fork."""
    return f"{random.getrandbits(64):016x}"


class PoolingBase(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    user: StrictStr | None = None
    truncate_prompt_tokens: Annotated[StrictInt, Field(ge=-1)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    request_id: StrictStr | None = Field(default=None, max_length=128)
    # vLLM's range (a signed 64-bit integer); lower runs earlier, above 0 is bulk.
    priority: Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] = 0
    use_activation: StrictBool | None = None
    # Accepted and checked as vLLM checks it (app/pooling/requests.py); poolq
    # has no prefix cache for it to salt.
    cache_salt: StrictStr | None = Field(default=None, min_length=1, max_length=128)


class CompletionMixin(BaseModel):
    input: PromptInput
    add_special_tokens: StrictBool = True


class ChatMessage(BaseModel):
    """One chat message, as vLLM's ChatCompletionMessageParam requires at least: a role and its content."""

    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatMixin(BaseModel):
    messages: list[ChatMessage]
    add_generation_prompt: StrictBool = False
    continue_final_message: StrictBool = False
    add_special_tokens: StrictBool = False
    chat_template: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class ClassifyRequest(PoolingBase, CompletionMixin):
    """`POST /classify`, completion form."""


class ClassifyChatRequest(PoolingBase, ChatMixin):
    """`POST /classify`, chat form: one conversation, one result."""


class PoolingFields(BaseModel):
    task: PoolingTask | None = None
    encoding_format: Literal["float", "base64", "bytes", "bytes_only"] = "float"
    embed_dtype: Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"] = "float32"
    endianness: Literal["native", "big", "little"] = "native"
    dimensions: StrictInt | None = None
    # poolq's extension: entity groups for token_classify, as transformers'
    # token-classification pipeline names its strategies.
    aggregation_strategy: Aggregation | None = None


class PoolingRequest(PoolingBase, CompletionMixin, PoolingFields):
    """`POST /pooling`, completion form."""


class PoolingChatRequest(PoolingBase, ChatMixin, PoolingFields):
    """`POST /pooling`, chat form."""


class PluginRequest(PoolingBase):
    """`POST /pooling` with `data`: vLLM's IOProcessorRequest, read only by an IO-processor plugin."""

    data: Any
    task: Literal["plugin"] = "plugin"


class ScoreContent(BaseModel):
    """A multimodal score input (`ScoreMultiModalParam`); poolq serves text models only."""

    content: list[dict[str, Any]]


ScoreInput = StrictStr | ScoreContent
ScoreSide = ScoreInput | list[ScoreInput]


class ScoringBase(PoolingBase):
    max_tokens_per_query: StrictInt = 0
    max_tokens_per_doc: StrictInt = 0
    instruction: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class ScoreQueriesDocuments(ScoringBase):
    queries: ScoreSide
    documents: ScoreSide


class ScoreQueriesItems(ScoringBase):
    queries: ScoreSide
    items: ScoreSide


class ScoreData(ScoringBase):
    data_1: ScoreSide
    data_2: ScoreSide


class ScoreText(ScoringBase):
    text_1: ScoreSide
    text_2: ScoreSide


# The four body shapes of /score, tried in vLLM's order; each names its sides.
SCORE_SHAPES: tuple[tuple[type[ScoringBase], str, str], ...] = (
    (ScoreQueriesDocuments, "queries", "documents"),
    (ScoreQueriesItems, "queries", "items"),
    (ScoreData, "data_1", "data_2"),
    (ScoreText, "text_1", "text_2"),
)


class RerankRequest(ScoringBase):
    query: ScoreInput
    documents: ScoreSide
    top_n: Annotated[StrictInt, Field(ge=0)] = 0


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
