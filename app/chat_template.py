"""A model's chat template rendered as transformers renders it, without transformers.

The API process cannot import transformers (it imports torch), yet `/tokenize`
with `messages` must count the tokens of the prompt the workers would build
with `tokenizer.apply_chat_template`. That method is a sandboxed jinja2
render with trim_blocks/lstrip_blocks, a JSON `tojson`, `raise_exception`,
the special tokens from tokenizer_config.json as variables, and, for
`continue_final_message`, the text cut right after the final message.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.errors import bad_request

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def render(template: str, messages: list[dict[str, Any]], config: dict[str, Any], *,
           add_generation_prompt: bool, continue_final_message: bool, tools: list | None = None,
           **kwargs: Any) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    specials = {name: _token_text(config.get(name)) for name in SPECIAL_TOKENS if config.get(name) is not None}
    try:
        text = env.from_string(template).render(messages=messages, tools=tools,
                                                add_generation_prompt=add_generation_prompt,
                                                **specials, **kwargs)
    except TemplateError as exc:
        raise bad_request(f"The chat template failed on these messages: {exc}", "messages") from None
    if continue_final_message:
        text = _cut_after_final_message(text, messages)
    return text


def _cut_after_final_message(text: str, messages: list[dict[str, Any]]) -> str:
    final = messages[-1].get("content") if messages else None
    if not isinstance(final, str) or not final.strip() or final.strip() not in text:
        raise bad_request("continue_final_message needs a final message whose text the chat template keeps.",
                          "continue_final_message")
    end = text.rindex(final.strip()) + len(final.strip())
    return text[:end]


def _token_text(value: Any) -> str:
    # tokenizer_config.json stores a special token as text or as an AddedToken dict.
    return value.get("content", "") if isinstance(value, dict) else str(value)


def _tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    # transformers' filter: real JSON (jinja's own escapes HTML).
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    raise TemplateError(message)
