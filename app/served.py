"""The models this deployment serves: each spec with its card, read once."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import ModelSpec, SettingsError
from app.errors import APIError, model_not_found
from models.catalog import ModelCard, ModelSourceError, describe


@dataclass(frozen=True)
class ServedModel:
    spec: ModelSpec
    card: ModelCard

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self, created: int) -> dict:
        """An entry of `GET /v1/models`, shaped like vLLM's ModelCard plus poolq's fields."""
        return {
            "id": self.name,
            "object": "model",
            "created": created,
            "owned_by": "poolq",
            "root": self.spec.source,
            "parent": None,
            "revision": self.spec.revision,
            "max_model_len": self.card.max_model_len,
            "architecture": self.card.architecture,
            "task": self.card.task,
            "tasks": list(self.card.tasks),
            "labels": self.card.labels,
        }


class ServedModels:
    def __init__(self, models: list[ServedModel]):
        self._by_name = {m.name: m for m in models}

    @classmethod
    def load(cls, specs: tuple[ModelSpec, ...]) -> ServedModels:
        served = []
        for spec in specs:
            try:
                card = describe(spec.source, revision=spec.revision, task=spec.task)
            except ModelSourceError as exc:
                raise SettingsError(f"model {spec.name!r}: {exc}") from exc
            served.append(ServedModel(spec, card))
        return cls(served)

    def __iter__(self):
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def resolve(self, name: str | None) -> ServedModel:
        """vLLM semantics: no name means the (first) served model; an unknown one is 404."""
        if not name:
            first = next(iter(self._by_name.values()), None)
            if first is None:
                raise APIError(503, "No model is served.", "ServiceUnavailable")
            return first
        try:
            return self._by_name[name]
        except KeyError:
            raise model_not_found(name) from None
