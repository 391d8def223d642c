"""Celery workers: thin tasks over app services and the models/ engine."""
