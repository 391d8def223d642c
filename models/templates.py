"""Score templates (vLLM §3.3): render a (query, document) pair into one prompt.

HF's chat-template settings: a sandbox that cannot mutate its inputs, with
trim_blocks/lstrip_blocks so `{% %}` lines leave no stray whitespace.
"""
from __future__ import annotations

from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from .types import PoolingInputError

_RESERVED = ("chat_template", "tools", "tokenize")


class ScoreTemplate:
    def __init__(self, source: str):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(source)

    def render(self, query: str, document: str, kwargs: dict[str, Any] | None = None) -> str:
        extra = {k: v for k, v in (kwargs or {}).items() if k not in _RESERVED}
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        try:
            return self.template.render(messages=messages, **extra)
        except Exception as exc:  # jinja errors are the request's fault (vLLM maps them to 400)
            raise PoolingInputError(f"score template failed to render: {exc}", "chat_template_kwargs") from exc


def load_template(value: str | None) -> ScoreTemplate | None:
    """A template given inline or as a path to a .jinja file."""
    if not value:
        return None
    if "{{" not in value and "{%" not in value:
        with open(value, encoding="utf-8") as fh:
            value = fh.read()
    return ScoreTemplate(value)
