"""Task modules; importing them registers the tasks with Celery."""

from workers.tasks import batches, jobs, maintenance, webhooks  # noqa: F401
