"""Task modules; importing them registers the tasks with Celery."""

from workers.tasks import batches, jobs, maintenance, schedules, webhooks  # noqa: F401
