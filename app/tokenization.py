"""vLLM's `POST /tokenize` and `POST /detokenize` for the served models, in the API process.

Shapes follow vLLM's serve/tokenize/protocol.py and serving.py: tokenize
takes `prompt` (add_special_tokens defaults to true) or chat `messages`
(rendered with the model's chat template; add_generation_prompt defaults to
true there, add_special_tokens to false) and answers {count, max_model_len,
tokens, token_strs}; detokenize takes `tokens` and answers {prompt}.

The API never imports torch, and transformers' AutoTokenizer does; so the
model's `tokenizer.json` is read with the `tokenizers` library (the backend
of the fast tokenizer the workers use: the same ids), lazily, once per model
and only when a tokenize route is called, so an API that never tokenizes
pays nothing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

from flask import current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from app.errors import APIError, bad_request, validation_error
from app.http import json_body
from app.pooling.protocol import ChatMessage
from app.pooling.requests import check_chat_options
from app.served import ServedModel


class TokenizeRequest(BaseModel):
    """`POST /tokenize`, completion form."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    prompt: StrictStr
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool | None = False


class TokenizeChatRequest(BaseModel):
    """`POST /tokenize`, chat form: the messages rendered with the model's chat template."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    messages: list[ChatMessage]
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False
    add_special_tokens: StrictBool = False
    return_token_strs: StrictBool | None = False
    chat_template: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    tokens: list[Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]]


REQUEST_MODELS = (TokenizeRequest, TokenizeChatRequest, DetokenizeRequest)


def tokenize():
    body = _object(json_body())
    request = _validate(TokenizeChatRequest if "messages" in body else TokenizeRequest, body)
    model = current_app.extensions["poolq"].served.resolve(request.model)
    tokenizer = model_tokenizer(model)
    if isinstance(request, TokenizeChatRequest):
        text = tokenizer.render_chat(request)
    else:
        text = request.prompt
    ids = tokenizer.backend.encode(text, add_special_tokens=request.add_special_tokens).ids
    token_strs = [tokenizer.backend.id_to_token(i) for i in ids] if request.return_token_strs else None
    return jsonify({"count": len(ids), "max_model_len": model.card.max_model_len, "tokens": ids,
                    "token_strs": token_strs})


def detokenize():
    request = _validate(DetokenizeRequest, _object(json_body()))
    model = current_app.extensions["poolq"].served.resolve(request.model)
    tokenizer = model_tokenizer(model)
    vocab = tokenizer.backend.get_vocab_size(with_added_tokens=True)
    unknown = next((t for t in request.tokens if t >= vocab), None)
    if unknown is not None:
        raise bad_request(f"Token id {unknown} is out of vocabulary (model `{model.name}` has {vocab} tokens).",
                          "tokens")
    return jsonify({"prompt": tokenizer.decode(request.tokens)})


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _validate(cls: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


# -- the tokenizer ------------------------------------------------------------

class ModelTokenizer:
    """tokenizer.json through `tokenizers`, plus what transformers reads from tokenizer_config.json."""

    def __init__(self, backend, config: dict[str, Any], chat_template: str | None):
        backend.no_padding()  # saved tokenizers often pad to a fixed length; vLLM tokenizes one prompt
        backend.no_truncation()
        self.backend = backend
        self.config = config
        self.chat_template = chat_template

    def decode(self, ids: list[int]) -> str:
        # vLLM decodes with transformers' defaults: special tokens kept.
        text = self.backend.decode(ids, skip_special_tokens=False)
        return _clean_up_spaces(text) if self.config.get("clean_up_tokenization_spaces") else text

    def render_chat(self, request: TokenizeChatRequest) -> str:
        check_chat_options(request)
        if not self.chat_template:
            raise bad_request("The model's tokenizer has no chat template, so `messages` cannot be rendered; "
                              "send `prompt` instead.", "messages")
        from app.chat_template import render  # jinja2, only for chat bodies

        messages = [m.model_dump(exclude_unset=True) for m in request.messages]
        return render(self.chat_template, messages, self.config, add_generation_prompt=request.add_generation_prompt,
                      continue_final_message=request.continue_final_message, tools=request.tools,
                      **(request.chat_template_kwargs or {}))


def model_tokenizer(model: ServedModel) -> ModelTokenizer:
    return _load(model.spec.source, model.spec.revision, model.name)


@functools.lru_cache(maxsize=32)
def _load(source: str, revision: str | None, name: str) -> ModelTokenizer:
    from tokenizers import Tokenizer

    path = _model_file(source, "tokenizer.json", revision)
    if path is None:
        raise APIError(501, f"Model `{name}` ships no tokenizer.json, which poolq's API tokenizes with; "
                            "/tokenize and /detokenize are not available for it.", "NotImplementedError")
    config_path = _model_file(source, "tokenizer_config.json", revision)
    config = json.loads(Path(config_path).read_text(encoding="utf-8")) if config_path else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is None and (jinja := _model_file(source, "chat_template.jinja", revision)):
        template = Path(jinja).read_text(encoding="utf-8")
    return ModelTokenizer(Tokenizer.from_file(path), config, template)


def _model_file(source: str, filename: str, revision: str | None) -> str | None:
    """A local directory's file, or a hub file through huggingface_hub's cache (as models/catalog reads config)."""
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local / filename) if (local / filename).is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source, filename, revision=revision)
    except Exception:  # absent, offline cache miss, no access: the caller says what is missing
        return None


def _clean_up_spaces(text: str) -> str:
    """transformers' clean_up_tokenization: spaces before punctuation and contractions removed."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
