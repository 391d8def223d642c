"""Prometheus metrics of a worker process, served on POOLQ_WORKER_METRICS_PORT.

Jobs run by model, task and outcome, their duration, and the engine's
micro-batching counters (batches, sequences, real and padded tokens): the
padded/real ratio is the padding the batcher could not avoid.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, REGISTRY

log = logging.getLogger(__name__)

JOBS_RUN = Counter("poolq_worker_jobs_total", "Jobs this worker finished.", ["model", "task", "outcome"])
# The scheduler's fair share, visible: sequences run per tenant (a tenant id per label value).
SEQUENCES_RUN = Counter("poolq_worker_sequences_total", "Sequences this worker ran through its engine, by tenant.",
                        ["model", "tenant"])
# Tokens are the fair share's unit (scheduler/policy.py): a job's sequences run sorted by length,
# so two tenants part-way through identical jobs can run equal tokens but unequal sequences.
TOKENS_RUN = Counter("poolq_worker_tokens_total", "Prompt tokens this worker ran through its engine, by tenant.",
                     ["model", "tenant"])
# How much each group transaction covers: the scheduler's batching of bookkeeping.
GROUP_JOBS = Histogram("poolq_worker_group_jobs", "Jobs per group transaction (claim, finish).", ["kind"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024))
JOB_SECONDS = Histogram("poolq_worker_job_seconds", "Time from claim to final write.", ["model"],
                        buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))


class EngineCollector:
    def __init__(self, registry_of_engines):
        self._engines = registry_of_engines

    def collect(self):
        families = {key: CounterMetricFamily(f"poolq_engine_{key}", f"Engine micro-batching: {key}.", labels=["model"])
                    for key in ("batches", "sequences", "real_tokens", "padded_tokens")}
        for name, engine in self._engines.loaded().items():
            for key, value in engine.batch_stats().items():
                if key in families:
                    families[key].add_metric([name], value)
        yield from families.values()


def serve_worker_metrics(port: int, engines) -> None:
    """Metrics are secondary: a port already taken is logged loudly, and the worker still serves jobs."""
    REGISTRY.register(EngineCollector(engines))
    try:
        start_http_server(port)
    except OSError as exc:
        log.error("worker metrics not served: port %d: %s", port, exc)
        return
    log.info("worker metrics on :%d/metrics", port)
