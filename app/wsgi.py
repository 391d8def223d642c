"""gunicorn entry: `gunicorn 'app.wsgi:app'`. Settings come from the environment."""

from app import create_app

app = create_app()
