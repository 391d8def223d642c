"""gunicorn, started from code so `poolq api` and `poolq up` serve the same way."""

from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from app import create_app
from app.config import Settings
from app.tenants.auth import warn_if_open

log = logging.getLogger(__name__)


class _RootLogger(Logger):
    """gunicorn's lines through poolq's handler (text or JSON), not gunicorn's own format."""

    def setup(self, cfg) -> None:
        # Before gunicorn sets its own: app.logs keeps its boot lines ("Booting worker",
        # "Listening at") out of INFO, and serve() says where the API listens.
        level = logging.getLogger("gunicorn.error").getEffectiveLevel()
        super().setup(cfg)
        self.error_log.handlers = []
        self.error_log.propagate = True
        self.error_log.setLevel(level)


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
        # POOLQ_ACCESS_LOG is poolq's own line per request (app.logs), with the request's ids.
        "accesslog": None,
        "logger_class": _RootLogger,
    }
    warn_if_open(settings.auth_required)
    log.info("API on http://%s:%d (gunicorn: %d process(es) x %d threads)", settings.host, settings.port, workers,
             threads)
    _Gunicorn(settings, options).run()
