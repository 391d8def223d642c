"""Prometheus metrics of the API process: `GET /metrics`.

- HTTP requests by route and status, and their latency;
- jobs accepted by model and task;
- the backlog (queued and running jobs by model), read from Postgres at
  scrape time, so it is right whichever API process answers the scrape.
gunicorn runs several processes: with PROMETHEUS_MULTIPROC_DIR set (`poolq
api` sets it), counters and histograms are summed across them. prometheus_client
picks its storage when it is first imported, so it is imported lazily here,
after the CLI has set that variable (every `app.*` import runs app/__init__).
"""

from __future__ import annotations

import os
import time

import functools
from types import SimpleNamespace

from flask import Flask, Response, g, request
from sqlalchemy import func, select

from app.jobs.records import Job


@functools.cache
def instruments() -> SimpleNamespace:
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        http_requests=Counter("poolq_http_requests_total", "HTTP requests answered.", ["method", "route", "status"]),
        http_seconds=Histogram("poolq_http_request_seconds", "HTTP request latency.", ["route"],
                               buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
        jobs_accepted=Counter("poolq_jobs_accepted_total", "Jobs accepted (committed and sent).", ["model", "task"]),
    )


class BacklogCollector:
    """queued and running jobs by model: the number to alert and autoscale on."""

    def __init__(self, app: Flask):
        self._app = app

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily("poolq_jobs", "Jobs waiting or running, by status and model.",
                                  labels=["status", "model"])
        with self._app.extensions["poolq"].request_session_factory() as session:
            rows = session.execute(
                select(Job.status, Job.model, func.count()).where(Job.status.in_(("queued", "running")))
                .group_by(Job.status, Job.model))
            for status, model, count in rows:
                gauge.add_metric([status, model], count)
        yield gauge


def init_metrics(app: Flask) -> None:
    backlog = BacklogCollector(app)
    metrics = instruments()

    @app.before_request
    def _start_timer():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response):
        # The route's rule, not the path: job ids must not become label values.
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.http_requests.labels(request.method, route, str(response.status_code)).inc()
        started = g.pop("metrics_started", None)
        if started is not None:
            metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def scrape():
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        output = generate_latest(registry)
        scratch = CollectorRegistry()
        scratch.register(backlog)
        output += generate_latest(scratch)
        # content_type, not mimetype: CONTENT_TYPE_LATEST already names its charset,
        # and Flask appends one to a mimetype ("charset=utf-8; charset=utf-8").
        return Response(output, content_type=CONTENT_TYPE_LATEST)


def job_accepted(model: str, task: str) -> None:
    instruments().jobs_accepted.labels(model, task).inc()
