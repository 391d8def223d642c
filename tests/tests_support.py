"""Small helpers shared by test modules."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def validate_whole(session, batch_id: str, served, max_items: int, chunk_lines: int, window: int):
    """A batch's whole validation in the caller's transaction, for tests that arrange batches: the
    same cut and steps as the `validate_batch` task, which commits step by step instead."""
    from app.batches import progress

    source = progress.validation_source(session, batch_id)
    if source is None:
        return progress.Validated([])
    send: list = []
    for step in progress.cut(source, served, max_items, chunk_lines):
        validated = progress.store_step(session, batch_id, step, window)
        send += validated.send
        if validated.stop:
            return progress.Validated(send, validated.failed, validated.finalize, True)
    return progress.Validated(send, stop=True)


def chunks_for(lines: int, chunk_lines: int) -> int:
    """How many chunks `lines` valid lines of one model are cut into (their sizes grow)."""
    from app.batches.progress import chunk_size

    count = 0
    while lines > 0:
        lines -= chunk_size(count, chunk_lines)
        count += 1
    return count
