"""Celery tasks: each one a single call into farm.cluster.coordinator."""

from __future__ import annotations

import os
from typing import Any

from celery import Task
from celery.signals import worker_ready

from farm.cluster.coordinator import announce_worker, worker_compile
from farm.errors import BackendUnavailable
from workers.app import app


@app.task(name="farm.compile", bind=True, autoretry_for=(BackendUnavailable,), retry_backoff=0.5,
          retry_backoff_max=30, retry_jitter=True, max_retries=8)
def compile_artifact(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    return worker_compile(message, self.request.id)


@worker_ready.connect
def _announce(**_: Any) -> None:
    if os.environ.get("FARM_METRICS_PORT"):  # this worker's own process metrics; totals come from the exporter
        from prometheus_client import start_http_server

        start_http_server(int(os.environ["FARM_METRICS_PORT"]))
    announce_worker(os.environ.get("FARM_WORKER_TARGETS", "").split(","))
