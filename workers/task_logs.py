"""Log lines inside a Celery task carry its ids (job, batch, delivery), from its arguments."""

from __future__ import annotations

import inspect

from celery.signals import task_postrun, task_prerun

from app.logs import bind, unbind

ID_ARGUMENTS = ("job_id", "batch_id", "delivery_id", "model")
_tokens: dict[str, object] = {}


def _ids(task, args, kwargs) -> dict:
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {})).arguments
    except TypeError:
        bound = dict(kwargs or {})
    return {name: bound[name] for name in ID_ARGUMENTS if bound.get(name) is not None}


@task_prerun.connect(weak=False)
def _bind_task_ids(task_id=None, task=None, args=None, kwargs=None, **_):
    _tokens[task_id] = bind(task_id=task_id, **_ids(task, args, kwargs))


@task_postrun.connect(weak=False)
def _unbind_task_ids(task_id=None, **_):
    token = _tokens.pop(task_id, None)
    if token is not None:
        try:
            unbind(token)
        except ValueError:
            pass


def install() -> None:
    """Importing this module connects the signals; this makes the import explicit at the call site."""
