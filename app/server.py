"""gunicorn, started from code so `poolq api` and `poolq up` serve the same way."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from app import create_app
from app.config import Settings


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict):
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self):
        return create_app(self._settings)


def serve(settings: Settings, workers: int = 2, threads: int = 32) -> None:
    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 120,
        # One line per request costs real throughput at thousands of requests/s.
        "accesslog": "-" if settings.access_log else None,
        "loglevel": "info",
    }
    _Gunicorn(settings, options).run()
