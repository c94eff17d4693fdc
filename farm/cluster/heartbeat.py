"""A worker's heartbeat: every HEARTBEAT_SECONDS it says it is alive (farm.cache.index.WorkerStatus: its host,
targets, tool versions, concurrency, tasks in flight), and the targets it serves stay served for LIVE_FOR
seconds after its last beat. A worker that stops unregisters at once; one that dies lapses. Coordinators then
fail fast with NoWorkerForTarget instead of waiting out their timeout, and `farm workers` lists who is alive."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from farm.cache.index import Coordination, WorkerStatus
from farm.log import get_logger

log = get_logger(__name__)

HEARTBEAT_SECONDS = 10.0
LIVE_FOR = 3 * HEARTBEAT_SECONDS  # three beats missed in a row: the worker is gone


class Heartbeat:
    """Beats on a daemon thread: a beat that fails (Redis away) is logged and the next one tries again."""

    def __init__(self, coordination: Coordination, status: Callable[[], WorkerStatus],
                 interval: float = HEARTBEAT_SECONDS, live_for: float = LIVE_FOR) -> None:
        self.coordination, self.status = coordination, status
        self.interval, self.live_for = interval, live_for
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="farm-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """The first beat here, so the worker serves its targets once this returns; then one per interval."""
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        self.coordination.heartbeat(self.status(), self.live_for)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a worker outlives an index outage; the next beat retries
                log.warning("heartbeat not recorded (%s); retrying in %.0f s", exc, self.interval)

    def stop(self) -> None:
        """No more beats, and unregister (best effort: if the index is away, the registration lapses)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval)
        try:
            self.coordination.forget_worker(self.status().name)
        except Exception as exc:  # noqa: BLE001 - stopping must not fail; LIVE_FOR ends the registration anyway
            log.warning("could not unregister this worker (%s); it lapses in %.0f s", exc, self.live_for)


def worker_status(name: str, targets: list[str], toolchain: dict[str, str], concurrency: int,
                  inflight: Callable[[], int]) -> Callable[[], WorkerStatus]:
    """The status this worker reports on each beat: fixed facts, and the tasks it runs at that moment."""
    host, pid, started = socket.gethostname(), os.getpid(), time.time()

    def status() -> WorkerStatus:
        return WorkerStatus(name, host, pid, tuple(targets), toolchain, concurrency, inflight(), started, time.time())

    return status


__all__ = ["HEARTBEAT_SECONDS", "LIVE_FOR", "Heartbeat", "worker_status"]
