"""A worker's own metrics, from every process of its pool (prometheus_client's multiprocess mode): tasks by
target and outcome, and their duration. Cluster-wide totals come from the exporter (farm/cache/metrics.py).

Celery runs tasks in forked pool processes, so a registry in the parent alone never saw one. Each process
writes its samples to files under PROMETHEUS_MULTIPROC_DIR; the parent serves their sum."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

PORT_VARIABLE = "FARM_METRICS_PORT"
DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_OWN_DIRECTORY = "FARM_OWN_METRICS_DIR"  # set when this worker made the directory, which it then removes


def enabled() -> bool:
    return bool(os.environ.get(PORT_VARIABLE))


def prepare() -> None:
    """Give the worker a directory for its processes' samples. It must run before prometheus_client is first
    imported in this process, which picks its value store then, and before the pool forks."""
    if enabled() and not os.environ.get(DIRECTORY_VARIABLE):
        os.environ[DIRECTORY_VARIABLE] = os.environ[_OWN_DIRECTORY] = tempfile.mkdtemp(prefix="farm-worker-metrics-")


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.tasks = Counter("farm_worker_tasks", "Compile tasks this worker ran, by target and outcome",
                             ["target", "status"])
        self.seconds = Histogram("farm_worker_task_seconds", "Wall time of this worker's compile tasks", ["target"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf")))


_metrics: _Metrics | None = None


def observe(target: str, status: str, seconds: float) -> None:
    """Count one task in this (pool) process; nothing when the worker serves no metrics."""
    global _metrics
    if not enabled():
        return
    _metrics = _metrics or _Metrics()
    _metrics.tasks.labels(target, status).inc()
    _metrics.seconds.labels(target).observe(seconds)


def serve() -> None:
    """In the worker's main process: the pool's summed samples and this process's own, on FARM_METRICS_PORT."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    ProcessCollector(registry=registry)
    start_http_server(int(os.environ[PORT_VARIABLE]), registry=registry)


def remove_directory(**_: Any) -> None:
    own = os.environ.get(_OWN_DIRECTORY)
    if own:
        shutil.rmtree(own, ignore_errors=True)
