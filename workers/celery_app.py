"""The Celery entry point: `celery -A workers.celery_app worker ...`.

Settings come from the environment (POOLQ_*, DATABASE_URL, REDIS_URL).
"""

from app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]

import workers.tasks  # noqa: E402,F401  (registers the tasks)
