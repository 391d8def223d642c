"""The HTTP client behind `poolq batch` and `poolq schedules`.

Those commands talk to the API, not the database, so they work against any
deployment the caller can reach with a key.
"""

from __future__ import annotations

import os

import click
import requests

# The routes a batch line or a schedule may run on (the API checks them too; checked here
# first, so a typo costs no upload).
ENDPOINTS = ("/classify", "/pooling", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank")


def default_url() -> str:
    return f"http://{os.environ.get('POOLQ_HOST', '127.0.0.1')}:{os.environ.get('POOLQ_PORT', '8000')}"


def connection_options(command):
    """--url and --api-key on every subcommand, so they may come anywhere on the line."""
    command = click.option("--api-key", envvar="POOLQ_API_KEY", default=None,
                           help="Bearer key (env POOLQ_API_KEY); none for a deployment with auth off.")(command)
    return click.option("--url", envvar="POOLQ_URL", default=None,
                        help="The API's base URL (env POOLQ_URL; default http://$POOLQ_HOST:$POOLQ_PORT).")(command)


class API:
    """A thin client; every non-2xx becomes a ClickException with the server's message (exit status 1)."""

    def __init__(self, url: str | None, api_key: str | None, timeout: float = 60):
        self.base = (url or default_url()).rstrip("/")
        self.http = requests.Session()
        self.timeout = timeout
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.http.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise click.ClickException(f"cannot reach {self.base}: {exc}") from None
        if not response.ok:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500] or response.reason
            raise click.ClickException(f"{method} {path}: HTTP {response.status_code}: {message}")
        return response
