"""Who is calling: an API key's tenant, or the default tenant with auth off.

`Authorization: Bearer <key>` is what OpenAI and vLLM clients send with
`api_key=...`, so they authenticate unchanged.
"""

from __future__ import annotations

import logging
import uuid

from flask import Flask, current_app, g, request

from app.db.request import db_session
from app.errors import APIError
from app.tenants.records import DEFAULT_TENANT_ID
from app.tenants.services import authenticate

log = logging.getLogger(__name__)

# Probes (SageMaker's /ping too), the API's description and Prometheus' scrape (keep /metrics on a
# network only the monitoring reaches).
PUBLIC_PATHS = ("/health", "/ping", "/ready", "/openapi.json", "/docs", "/metrics")
# The docs page's own assets (Swagger UI, served from an installed package): a browser sends no key.
PUBLIC_PREFIXES = ("/docs/assets/",)


def current_tenant_id() -> uuid.UUID:
    return g.tenant_id


def unauthorized() -> APIError:
    return APIError(401, "Invalid or missing API key: send `Authorization: Bearer <key>`.", "AuthenticationError",
                    headers={"WWW-Authenticate": 'Bearer realm="poolq"'})


def warn_if_open(required: bool) -> None:
    """Said by the processes that serve HTTP (not by every one that builds the app: workers, beat)."""
    if not required:
        log.warning("AUTHENTICATION IS OFF: every caller acts as the default tenant and can read every job. "
                    "Set POOLQ_AUTH=required and create keys with `poolq keys create` before exposing this API.")


def init_auth(app: Flask, required: bool) -> None:

    @app.before_request
    def _identify_caller():
        if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
            return None
        if not current_app.extensions["poolq"].settings.auth_required:
            g.tenant_id = DEFAULT_TENANT_ID
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        session = db_session()
        tenant_id = authenticate(session, token.strip()) if scheme.lower() == "bearer" and token else None
        if tenant_id is None:
            raise unauthorized()
        session.commit()  # last_used_at, in its own small unit of work before the request's
        g.tenant_id = tenant_id
        return None
