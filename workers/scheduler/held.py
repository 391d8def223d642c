"""What the scheduler holds for one job or batch chunk while it is in flight."""
from __future__ import annotations

import enum
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


class State(enum.Enum):
    PREPARING = "preparing"  # claimed, being tokenized
    RUNNING = "running"      # its units are in the policy or the engine
    WRITING = "writing"      # its outcome is queued for (or in) the group write
    DONE = "done"            # written, or abandoned (cancelled, taken over); messages acked


@dataclass(frozen=True)
class Delivery:
    """A broker message to ack once the work it carried is settled, and its Celery task id
    (for the events Flower shows)."""

    message: Any
    task_id: str


@dataclass(eq=False)
class Held:
    kind: str  # "job" | "chunk"
    key: Hashable  # job id | (batch id, chunk index)
    model: str
    tenant: Hashable
    bulk: bool
    attempt: int
    payload: Any  # the ClaimedJob or ClaimedChunk
    deliveries: list[Delivery] = field(default_factory=list)
    state: State = State.PREPARING
    since: float = field(default_factory=time.monotonic)
    prepared: Any = None  # work.Plan once tokenized
    answered: list = field(default_factory=list)  # chunk lines refused at preparation
    parts: list[dict[int, Any]] = field(default_factory=list)  # per unit: slice begin -> raw outputs
    remaining: int = 0  # sequences not yet back from the engine
    outstanding: int = 0  # slices in the engine now
    sealed: bool = True  # False while a streamed job's further units are still being made
    streaming: bool = False  # its further units are made a turn at a time by the preparation threads
    error: BaseException | None = None
