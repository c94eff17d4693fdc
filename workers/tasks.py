"""Celery tasks: each one a single call into farm.cluster.coordinator."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from farm.cluster.coordinator import announce_worker, worker_compile
from farm.errors import BackendUnavailable
from workers import metrics
from workers.app import app

# Before prometheus_client is first imported (none of the above imports it) and before the pool forks.
metrics.prepare()


@app.task(name="farm.compile", bind=True, autoretry_for=(BackendUnavailable,), retry_backoff=0.5,
          retry_backoff_max=30, retry_jitter=True, max_retries=8)
def compile_artifact(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    start, status = time.perf_counter(), "error"
    try:
        result = worker_compile(message, self.request.id)
        status = str(result.get("status", "unknown"))
        return result
    finally:
        metrics.observe(str(message.get("target", "unknown")), status, time.perf_counter() - start)


@worker_ready.connect
def _announce(**_: Any) -> None:
    if metrics.enabled():  # this worker's own metrics, its pool's included; totals come from the exporter
        metrics.serve()
    announce_worker(os.environ.get("FARM_WORKER_TARGETS", "").split(","))


worker_shutdown.connect(metrics.remove_directory)
