"""The Celery application: reliability settings only; tasks are in workers/tasks.py."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import celeryd_init

from farm.config import FarmConfig

if TYPE_CHECKING:
    from farm.cluster.coordinator import Coordinator


def make_app(config: FarmConfig | None = None) -> Celery:
    config = config or FarmConfig.from_env()
    app = Celery("farm", broker=config.broker_url, backend=config.result_backend, include=["workers.tasks"])
    app.conf.update(
        # A message is acknowledged only once its task finished, and given back if the worker process
        # dies, so a SIGKILLed compile is redone (tasks are idempotent by content key).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=config.task_time_limit,
        task_soft_time_limit=config.task_time_limit * 0.9,
        broker_transport_options=_transport_options(config),
        # A Redis restart must not hang a worker or a coordinator on a dead socket: time out, reconnect.
        redis_socket_timeout=10,
        redis_socket_connect_timeout=5,
        redis_retry_on_timeout=True,
        redis_backend_health_check_interval=10,
        broker_connection_max_retries=None,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        task_default_queue="farm.default",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Task events (sent, received, started, succeeded, ...) for Flower and `celery events`: what `worker -E`
        # turns on, set here so every worker sends them however it was started.
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


def make_coordinator(config: FarmConfig) -> Coordinator:
    """A coordinator that sends its compile messages through this deployment's Celery app."""
    from farm.cluster.coordinator import Coordinator

    return Coordinator(config, make_app(config))


@celeryd_init.connect
def _worker_settings(conf: Any, **_: Any) -> None:
    """Settings for workers only (`celery worker` sends celeryd_init before it builds the result backend), from the
    environment as the worker's tasks read it."""
    conf.update(_result_writes_ridden_out(FarmConfig.from_env()))


def _result_writes_ridden_out(config: FarmConfig) -> dict[str, Any]:
    """A finished task's result is written by Celery, not farm: its store_result reads the stored state, then
    writes, and by default gives up at the first connection error. A task that met a Redis outage there, its
    artifact built and indexed, was recorded FAILED with redis-py's ConnectionError, or not recorded at all while
    its message was acknowledged. Retried instead for about the outage grace, as farm's own steps are (full jitter
    capped at 2 s: a second a retry on average). Workers only: a coordinator rides out its reads itself, in
    slices (Coordinator._wait), which retries inside get() would stretch."""
    return {"result_backend_always_retry": True, "result_backend_max_sleep_between_retries_ms": 2000,
            "result_backend_max_retries": max(1, math.ceil(config.outage_grace))}


def _transport_options(config: FarmConfig) -> dict[str, float]:
    # Unacknowledged messages (their worker died whole) come back after the visibility timeout, well above
    # the task time limit; the sweep that returns them runs often enough for that timeout to mean something.
    visibility = config.visibility_timeout or config.task_time_limit * 6
    return {"visibility_timeout": int(visibility), "unacked_restore_interval": max(1, min(10, int(visibility / 5))),
            "unacked_restore_throttle": 1, "socket_timeout": 10, "socket_connect_timeout": 5,
            "health_check_interval": 10}


app = make_app()
