"""Celery tasks: each one a single call into farm.cluster.coordinator; and the worker's life: its heartbeat
(however the worker was started, `farm worker` or plain `celery worker -Q farm.compile.<target>`) and its
metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown
from celery.worker import state

from farm.cache import keys
from farm.cluster.coordinator import start_heartbeat, worker_compile
from farm.cluster.heartbeat import Heartbeat
from farm.errors import BackendUnavailable
from farm.targets import REGISTRY
from workers import metrics
from workers.app import app

log = logging.getLogger(__name__)

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


def served_targets(queues: list[str]) -> list[str]:
    """The targets whose queues this worker consumes: what it serves, whoever started it and how."""
    targets = [t for t in map(keys.target_of_queue, queues) if t is not None]
    unknown = [t for t in targets if t not in REGISTRY]
    if unknown:
        log.warning("queues of unknown targets consumed, not announced: %s", ", ".join(unknown))
    return [t for t in targets if t in REGISTRY]


_heartbeats: list[Heartbeat] = []


@worker_ready.connect
def _announce(sender: Any, **_: Any) -> None:
    if metrics.enabled():  # this worker's own metrics, its pool's included; totals come from the exporter
        metrics.serve()
    targets = served_targets(list(sender.app.amqp.queues.consume_from))
    if not targets:
        log.warning("this worker consumes no farm.compile.<target> queue: no coordinator will send it work")
        return
    concurrency = int(getattr(sender.controller, "concurrency", 0) or 1)
    _heartbeats.append(start_heartbeat(sender.hostname, targets, concurrency, lambda: len(state.active_requests)))


@worker_shutdown.connect
def _retire(**_: Any) -> None:
    while _heartbeats:
        _heartbeats.pop().stop()
    metrics.remove_directory()
