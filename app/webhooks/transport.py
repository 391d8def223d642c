"""One POST to a webhook endpoint, at an address the SSRF check approved.

http.client rather than requests: it lets the connection go to the checked
address while TLS still verifies the URL's host name (SNI and certificate),
it never follows redirects, and it reads no more of the answer than asked.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

RESPONSE_PREFIX_BYTES = 1024
USER_AGENT = "poolq-webhooks/1"


@dataclass(frozen=True)
class Response:
    status_code: int | None
    latency_ms: int
    body_prefix: str | None = None
    error: str | None = None  # a connection error or timeout; status_code is None then
    reached: bool = False  # a connection was made: the endpoint may have seen the request


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, connect_timeout: float, read_timeout: float):
        super().__init__(host, port, timeout=connect_timeout)
        self._address, self._read_timeout = address, read_timeout

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.settimeout(self._read_timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, connect_timeout: float, read_timeout: float):
        super().__init__(host, port, timeout=connect_timeout, context=ssl.create_default_context())
        self._address, self._read_timeout = address, read_timeout

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        # server_hostname: SNI and certificate checks against the URL's host, not the address.
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
        self.sock.settimeout(self._read_timeout)


def post(url: str, address: str, headers: dict[str, str], body: str, connect_timeout: float,
         read_timeout: float, opened: Callable[[http.client.HTTPConnection], None] | None = None) -> Response:
    """`opened` gets the connection before it connects, so a shutting-down worker can cut it."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(parts.hostname, port, address, connect_timeout, read_timeout)
    if opened is not None:
        opened(connection)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    payload = body.encode("utf-8")
    started = time.monotonic()
    try:
        connection.request("POST", path, body=payload, headers={
            **headers, "Content-Type": "application/json", "Content-Length": str(len(payload)),
            "User-Agent": USER_AGENT})
        answer = connection.getresponse()
        prefix = answer.read(RESPONSE_PREFIX_BYTES)
        # Postgres text cannot hold NUL; an endpoint may answer anything.
        text = prefix.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        return Response(answer.status, _ms_since(started), text, reached=True)
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout, TLS, malformed answer
        connected = connection.sock is not None
        return Response(None, _ms_since(started), error=describe_error(exc, connected), reached=connected)
    finally:
        connection.close()


def describe_error(exc: BaseException, connected: bool) -> str:
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return "read timeout" if connected else "connect timeout"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
