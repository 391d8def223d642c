"""Every ORM module, imported once so the metadata (and Alembic) sees all tables."""

from app.batches.records import Batch, BatchChunk, BatchOutput, File
from app.db.base import Base
from app.jobs.records import Job, JobResult
from app.schedules.records import Schedule  # noqa: F401  (registers the table)
from app.tenants.records import ApiKey, Tenant
from app.webhooks.records import DisabledEndpoint, WebhookAttempt, WebhookDelivery

metadata = Base.metadata

__all__ = ["ApiKey", "Batch", "BatchChunk", "BatchOutput", "DisabledEndpoint", "File", "Job", "JobResult", "Tenant",
           "WebhookAttempt", "WebhookDelivery", "metadata"]
