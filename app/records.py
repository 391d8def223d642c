"""Every ORM module, imported once so the metadata (and Alembic) sees all tables."""

from app.db.base import Base
from app.jobs.records import Job, JobResult

metadata = Base.metadata

__all__ = ["Job", "JobResult", "metadata"]
