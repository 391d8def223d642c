"""gunicorn entry: `gunicorn 'app.wsgi:app'`. Settings come from the environment."""

from app import create_app
from app.tenants.auth import warn_if_open

app = create_app()
warn_if_open(app.extensions["poolq"].settings.auth_required)
