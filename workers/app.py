"""The Celery application: reliability settings only; tasks are in workers/tasks.py."""

from __future__ import annotations

from celery import Celery

from farm.config import FarmConfig


def make_app(config: FarmConfig | None = None) -> Celery:
    config = config or FarmConfig.from_env()
    app = Celery("farm", broker=config.broker_url, backend=config.redis_url, include=["workers.tasks"])
    app.conf.update(
        # A message is acknowledged only once its task finished, and given back if the worker process
        # dies, so a SIGKILLed compile is redone (tasks are idempotent by content key).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=config.task_time_limit,
        task_soft_time_limit=config.task_time_limit * 0.9,
        # Unacknowledged messages come back after this long: well above the task time limit.
        broker_transport_options={"visibility_timeout": int(config.visibility_timeout or config.task_time_limit * 6)},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        task_default_queue="farm.default",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app()
