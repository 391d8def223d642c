"""poolq's application factory: Flask, the database and Celery, built once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.broker import redis_client_url
from app.celery import celery_init_app
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.db.request import init_request_sessions
from app.errors import register_error_handlers
from app.jobs.admission import Admission
from app.jobs.events import job_events
from app.jobs.intake import JobIntake
from app.logs import init_request_log_context
from app.metrics import init_metrics
from app.served import ServedModels
from app.tenants.auth import init_auth

# No API statement runs longer than this (the longest are a 200 MB file's
# insert or read): a request never holds a connection, or the locks it took,
# for longer, whatever the database is doing.
API_STATEMENT_TIMEOUT_MS = 30_000
# A request waits this long for a row lock (a worker's write holds its rows
# for milliseconds), then answers 503 instead of queueing behind a stuck holder.
API_LOCK_TIMEOUT_MS = 5_000
# The server ends a request's transaction left idle this long (its process hung
# or stopped mid-request), so the locks it holds do not outlive it.
API_IDLE_IN_TRANSACTION_MS = 120_000
# A request waits this long for a pooled connection, then answers 503: with
# the database hung, requests fail fast instead of piling up behind the pool.
API_POOL_TIMEOUT_S = 5
# Connections each of an API process's two pools keeps: one per gunicorn thread (`poolq
# api --threads`, 32), so a burst of requests reuses them. With fewer kept, the
# connections past the pool's size were opened and closed per request under load (a
# Postgres backend started and ended each time); the most in use at once is unchanged.
API_POOL_SIZE, API_POOL_OVERFLOW = 32, 8


@dataclass
class Poolq:
    """What routes and tasks need, hung on `app.extensions["poolq"]`."""

    settings: Settings
    served: ServedModels
    db_engine: Engine
    session_factory: sessionmaker[Session]
    # The API's own sessions (requests, their polls), with a statement timeout
    # a worker's long writes must not have. Lazy: a worker never connects it.
    request_session_factory: sessionmaker[Session]
    # The same bounds, for the requests' single statements that commit by themselves (a
    # job's INSERT, the sync routes' reads): a pool of its own whose connections are in
    # autocommit from the start, so a checkout neither switches them into it nor rolls
    # back and switches out on return (an INSERT's CPU on 2 vCPUs: 617 -> 475 us).
    statement_engine: Engine
    celery: Celery
    events: object  # app.jobs.events: wakes synchronous requests when their job finishes
    admission: Admission
    intake: JobIntake  # writes and sends accepted jobs, grouped across request threads


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    app = Flask("poolq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False

    db_engine = make_engine(settings.database_url)
    api_bounds = dict(statement_timeout_ms=API_STATEMENT_TIMEOUT_MS, lock_timeout_ms=API_LOCK_TIMEOUT_MS,
                      idle_in_transaction_ms=API_IDLE_IN_TRANSACTION_MS, pool_timeout=API_POOL_TIMEOUT_S,
                      pool_size=API_POOL_SIZE, max_overflow=API_POOL_OVERFLOW)
    request_engine = make_engine(settings.database_url, **api_bounds)
    # No transaction is ever open on these connections, so none is rolled back on return.
    statement_engine = make_engine(settings.database_url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                                   **api_bounds)
    celery = celery_init_app(app, settings)
    request_session_factory = make_session_factory(request_engine)
    poolq = Poolq(
        settings=settings,
        served=ServedModels.load(settings.models),
        db_engine=db_engine,
        session_factory=make_session_factory(db_engine),
        request_session_factory=request_session_factory,
        statement_engine=statement_engine,
        celery=celery,
        events=job_events(redis_client_url(settings.broker_url), settings.namespace),
        admission=Admission(settings.max_queued_jobs, settings.tenant_max_queued_jobs),
        intake=JobIntake(statement_engine, celery, request_session_factory),
    )
    app.extensions["poolq"] = poolq
    celery.poolq = poolq  # the task base class reaches settings and sessions here
    init_request_sessions(app)
    register_error_handlers(app)
    init_auth(app, settings.auth_required)
    init_request_log_context(app, access_log=settings.access_log)
    init_metrics(app)

    from app.batches.routes import bp as batches_bp
    from app.jobs.routes import bp as jobs_bp
    from app.openapi import bp as openapi_bp
    from app.pooling.routes import bp as pooling_bp
    from app.schedules.routes import bp as schedules_bp
    from app.system.routes import bp as system_bp
    from app.webhooks.routes import bp as webhooks_bp

    app.register_blueprint(system_bp)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(pooling_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(batches_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(schedules_bp)
    logging.getLogger(__name__).debug("poolq app created for %d model(s)", len(settings.models))
    return app
