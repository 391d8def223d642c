"""The models this deployment serves: each spec with its card, read once."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import ModelSpec, SettingsError
from app.errors import APIError, bad_request, model_not_found
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

    def task_not_served(self, task: str, param: str | None = "task", route: bool = False) -> APIError:
        """A 400 that names the model, the task, why it is not served, and how to serve it.

        vLLM answers these with a 404 (no route mounted), a 501, or advice
        about its own `--pooler-config.task` flag; poolq says what its own
        `--model NAME=SOURCE?task=...` option changes. Where vLLM would have
        mounted no such route (`route`, for a task the architecture cannot
        run), FastAPI's `"detail": "Not Found"` rides along: vLLM clients and
        vLLM's own tests (classify/test_online.py::test_score) look for it.
        """
        error = bad_request(self.why_not_served(task), param)
        if route and (task in ("score", "rerank") and not self.card.supports_score
                      or task not in self.card.supported_tasks):
            error.extra["detail"] = "Not Found"
        return error

    def why_not_served(self, task: str) -> str:
        card, name = self.card, self.name
        model = f"Model `{name}` ({card.architecture})"
        if task in ("score", "rerank"):
            if card.num_labels != 1:
                return (f"{model} does not serve {task}: {task} needs a cross-encoder with num_labels == 1; "
                        f"this model has {card.num_labels}. Serve a one-label cross-encoder "
                        f"(--model NAME=SOURCE) for score and rerank.")
            return (f"{model} does not serve {task}: {task} needs the classify task and the model is served "
                    f"for {card.task}. Serve it with --model {name}=SOURCE?task=classify.")
        if task in card.supported_tasks:
            # One active pooling task per model, as in vLLM: the other task needs its own entry.
            return (f"{model} is served for {card.task}, not {task}: a model serves one pooling task. Serve it "
                    f"with --model {name}=SOURCE?task={task}, or add a second --model entry under another "
                    f"name with ?task={task}.")
        return (f"{model} does not serve {task}: it supports only {' and '.join(card.supported_tasks)}; {task} "
                f"needs a *ForSequenceClassification model for classify, score and rerank, or a "
                f"*ForTokenClassification (or sequence-classification) model for token_classify.")


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
