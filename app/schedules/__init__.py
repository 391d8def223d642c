"""Schedules: cron-fired batches for nightly reprocessing (a file, or a saved selection of past jobs)."""
