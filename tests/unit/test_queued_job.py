"""The accepted job's plain record (app.jobs.services.QueuedJob) carries every column of the jobs table."""

from dataclasses import fields

from app.jobs import services
from app.jobs.records import Job


def test_a_queued_job_has_a_field_for_every_column_of_the_jobs_table():
    columns = {attr.key for attr in Job.__mapper__.column_attrs}
    assert {f.name for f in fields(services.QueuedJob)} == columns


def test_a_new_job_is_written_with_the_defaults_the_orm_row_would_have():
    # What the INSERT writes for the columns new_job does not set: the ORM's own defaults.
    job = services.QueuedJob(id=None, tenant_id=None, task="classify", model="m", request={}, num_inputs=1, meta=None,
                             webhook_url=None, webhook_events=None, idempotency_key=None, request_hash=None,
                             created_at=None, enqueued_at=None)
    for attr in Job.__mapper__.column_attrs:
        default = attr.columns[0].default
        if default is not None and default.is_scalar:
            assert getattr(job, attr.key) == default.arg, attr.key
