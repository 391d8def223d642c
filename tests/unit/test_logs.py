"""app.logs: JSON lines with the context's ids; library chatter out of INFO."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app import logs


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield stream
    root.handlers, root.level = saved[0], saved[1]
    logging.captureWarnings(False)


def test_json_lines_carry_the_bound_ids(captured):
    logs.configure_logging("INFO", "json", captured)
    with logs.log_context(job_id="j1", tenant="t1"):
        logging.getLogger("poolq.test").warning("hello %s", "there")
        with logs.log_context(batch_id="b1"):
            logging.getLogger("poolq.test").info("inner")
    logging.getLogger("poolq.test").info("outside")
    first, inner, outside = (json.loads(line) for line in captured.getvalue().splitlines())
    assert first["message"] == "hello there" and first["level"] == "WARNING" and first["logger"] == "poolq.test"
    assert (first["job_id"], first["tenant"]) == ("j1", "t1") and "batch_id" not in first
    assert (inner["job_id"], inner["batch_id"]) == ("j1", "b1")
    assert "job_id" not in outside


def test_library_progress_lines_stay_out_of_info(captured):
    logs.configure_logging("INFO", "text", captured)
    logging.getLogger("celery.beat").info("Scheduler: Sending due task sweep-jobs (poolq.sweep_jobs)")
    logging.getLogger("celery.beat").info("beat: Starting...")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("celery.app.trace").info("Task poolq.sweep_jobs[x] succeeded in 0.01s: 0")
    logging.getLogger("kombu.connection").warning("a warning still shows")
    text = captured.getvalue()
    assert "beat: Starting" in text and "a warning still shows" in text
    assert "Sending due task" not in text and "SQLiteImpl" not in text and "succeeded in" not in text
