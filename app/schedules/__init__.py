"""Schedules: cron-fired batches for nightly reprocessing (a file, or a saved selection of past jobs)."""

FIRE_SCHEDULES = "poolq.fire_schedules"  # beat's task (workers/tasks/schedules.py), named here for app/celery.py
