"""The compilation farm: a coordinator that keys, deduplicates and batches compile requests into Celery
tasks on per-target queues, and the worker side of those tasks.

Single flight: the first request for a cache key takes `farm:lock:{key}` (SET NX PX) with its task ID as
the value; later requests for the same key wait on that task's result instead of sending another.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, TypeVar

from farm.cache import keys
from farm.cache.backends import make_store
from farm.cache.builder import ArtifactBuilder, check_pattern_id
from farm.cache.counting import best_effort
from farm.cache.direct import direct_key
from farm.cache.index import GONE, STORED, UNKNOWN, ClusterIndex, Coordination
from farm.cache.index.redis import RedisIndex
from farm.cache.store import ArtifactMeta, ArtifactStore
from farm.cluster.heartbeat import HEARTBEAT_SECONDS, Heartbeat, worker_status
from farm.cluster.messages import CompileMessage, Status, TaskResult, WirePart, content_key, shared_texts
from farm.compiler.codegen.llvm import ruleset_parts, runtime_ir
from farm.compiler.tools import artifact_key
from farm.config import FarmConfig, masked
from farm.errors import (
    BackendUnavailable,
    CompileTimeout,
    ConfigError,
    FarmError,
    NoWorkerForTarget,
    RemoteCompileFailed,
    SharedModuleMissing,
    UnsupportedTarget,
)
from farm.lang.serialize import ruleset_to_json
from farm.lang.transduce import RuleSet
from farm.log import get_logger
from farm.targets import REGISTRY, resolve

log = get_logger(__name__)
T = TypeVar("T")


def riding_out(fn: Callable[[], T], deadline: float, what: str) -> T:
    """fn(), retried with capped exponential backoff while Redis, the broker or S3 is unreachable, until
    `deadline` (time.perf_counter); then the last BackendUnavailable propagates. Every step it retries is
    idempotent: content-keyed artifacts, and an index entry written only after its object is stored."""
    delay = 0.1
    while True:
        try:
            return fn()
        except BackendUnavailable as exc:
            if time.perf_counter() + delay > deadline:
                raise
            log.warning("%s: %s; retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass(frozen=True)
class CompileRequest:
    pattern_id: str
    target: str
    opt_level: int
    parts: tuple[tuple[str, str], ...]  # (module name, IR text), linked in this order
    ruleset_json: str = ""
    fingerprint: str = ""  # the ruleset's, for its direct-mode entry (farm/cache/direct.py); "" for raw IR

    @classmethod
    def for_ruleset(cls, pattern_id: str, ruleset: RuleSet, target: str, opt_level: int) -> CompileRequest:
        if target not in REGISTRY:
            raise UnsupportedTarget(f"cluster targets must be named ({', '.join(REGISTRY)}), not {target!r}")
        parts = tuple(ruleset_parts(ruleset, REGISTRY[target].triple))
        return cls(check_pattern_id(pattern_id), target, opt_level, parts, ruleset_to_json(ruleset),
                   ruleset.fingerprint())


@dataclass
class Outcome:
    request: CompileRequest
    key: str
    status: Status
    meta: ArtifactMeta | None = None
    error: str = ""
    seconds: float = 0.0


# A worker built or found the artifact, but its index entry is gone by the time the coordinator reads it: evicted
# meanwhile (`farm cache gc --shared`), so it is requested again.
EVICTED_MEANWHILE = "the worker reported success but the index has no entry (evicted meanwhile?)"


def require_cluster(config: FarmConfig) -> None:
    missing = [name for name, value in (("FARM_REDIS_URL", config.redis_url), ("FARM_BROKER_URL", config.broker_url),
                                        ("FARM_S3_ENDPOINT", config.s3_endpoint)) if not value]
    if missing:
        raise ConfigError(f"this command needs the cluster deployment; set {', '.join(missing)} (see README.md)")


class Coordinator:
    """`app`: the Celery application of the deployment (workers.app.make_app), given by the caller: the
    library does not build one from the environment. `index` and `store`: the cluster's shared index and store,
    by default the Redis and S3 that `config` names; tests pass in-process ones (MemoryIndex, MemoryStore)."""

    def __init__(self, config: FarmConfig, app: Any, index: ClusterIndex | None = None,
                 store: ArtifactStore | None = None) -> None:
        self.config = config
        if index is None or store is None:
            require_cluster(self.config)
        self.index: ClusterIndex = index or RedisIndex(self.config.redis_url)  # type: ignore[arg-type]
        self.store = store or make_store(self.config, self.index)
        self.app = app
        self._toolchains: dict[str, tuple[float, dict[str, str]]] = {}

    TOOLCHAIN_TTL = 10.0  # seconds a target's published toolchain is trusted without asking Redis again

    def _toolchain(self, target: str) -> dict[str, str] | None:
        cached = self._toolchains.get(target)
        if cached is not None and time.monotonic() - cached[0] < self.TOOLCHAIN_TTL:
            return cached[1]
        versions = self.index.toolchain(target)
        if versions is not None:
            self._toolchains[target] = (time.monotonic(), versions)
        return versions

    def key_for(self, request: CompileRequest) -> tuple[str, dict[str, str]]:
        versions = self._toolchain(request.target)
        if versions is None:
            raise _no_worker(request.target)
        return artifact_key(list(request.parts), resolve(request.target), request.opt_level, versions), versions

    def request(self, request: CompileRequest, timeout: float = 600.0) -> Outcome:
        return self.ensure([request], timeout)[0]

    def ensure(self, requests: list[CompileRequest], timeout: float = 600.0,
               progress: Callable[[Outcome], None] | None = None, retry_evicted: bool = True) -> list[Outcome]:
        """Artifacts for every request: shared hits answered at once, misses compiled once per key. An outage
        of Redis, the broker or S3 shorter than the outage grace (and the timeout) is ridden out. An artifact
        evicted (`farm cache gc --shared`) between its build and this answer is requested again, once."""
        start = time.perf_counter()
        deadline = start + timeout
        grace = lambda: min(deadline, time.perf_counter() + self.config.outage_grace)  # noqa: E731
        outcomes: list[Outcome | None] = [None] * len(requests)
        waiting: dict[str, list[int]] = {}
        messages: list[Any] = []
        shared: dict[str, str] = {}

        def done(i: int, outcome: Outcome) -> None:
            outcomes[i] = outcome
            if progress:
                progress(outcome)

        for i, req in enumerate(requests):
            mine = f"farm-{uuid.uuid4().hex}"  # chosen once: a retried lock attempt must recognise its own lock
            hit, holder, message = riding_out(partial(self._hit_or_lock, req, mine), grace(), "coordinator")
            if hit is not None:
                done(i, Outcome(req, hit.key, Status.CACHED, hit, seconds=time.perf_counter() - start))
                continue
            if message is not None:
                messages.append(message)
                shared.update(shared_texts(req.parts))
            waiting.setdefault(holder, []).append(i)
        if messages:
            riding_out(lambda: self._share(shared), grace(), "coordinator sharing modules")
            riding_out(lambda: self._publish(messages), grace(), "coordinator publishing")
        sent = {message.id: message for message in messages}
        evicted: list[int] = []
        for task_id, indices in waiting.items():
            result = self._wait(task_id, requests[indices[0]].target, deadline, sent.get(task_id), shared)
            for i in indices:
                settle = partial(self._settle, requests[i], result, time.perf_counter() - start)
                outcome = riding_out(settle, grace(), "coordinator")
                if outcome.error == EVICTED_MEANWHILE and retry_evicted:
                    evicted.append(i)
                else:
                    done(i, outcome)
        if evicted:
            again = self.ensure([requests[i] for i in evicted], max(deadline - time.perf_counter(), 0.0), progress,
                                retry_evicted=False)
            for i, outcome in zip(evicted, again, strict=True):
                outcomes[i] = outcome
        return outcomes  # type: ignore[return-value]

    def _check_served(self, target: str) -> None:
        """NoWorkerForTarget when no live worker serves `target`; an index outage is not taken for that."""
        try:
            served = self.index.toolchain(target) is not None
        except BackendUnavailable:
            return
        if not served:
            self._toolchains.pop(target, None)
            raise _no_worker(target, "any more (the last one stopped or stopped beating); the message waits in "
                                     "its queue for the next")

    def _hit_or_lock(self, req: CompileRequest, mine: str) -> tuple[ArtifactMeta | None, str, Any]:
        """A shared hit; or the task ID to wait on, with the message to send if that task is ours.

        One index round trip decides and counts a miss (taking the lock), or a hit on a node that holds a copy of
        the indexed library (the bytes the index's sha256 names, hashed now): such a node asks the store nothing. It
        can serve the artifact whatever the store holds; a store that lost the object is repaired by the first
        request from a node without a copy, or by a builder's fetch. A node without a copy asks the store (a HEAD)
        about an indexed artifact before it counts a hit, so an object the store lost is a miss and is rebuilt."""
        key, versions = self.key_for(req)
        claim = partial(self.index.hit_or_acquire, key, req.pattern_id, req.target, mine,
                        self.config.task_time_limit * 2)
        found = claim(self.store.held_sha256(key) or UNKNOWN)
        if found.unsettled:  # indexed, and no copy of it here: the store says whether the object is there
            found = claim(STORED if self.store.exists(key) else GONE)
        if found.meta is not None:
            return found.meta, "", None
        if found.holder != mine:
            return None, found.holder, None
        message = CompileMessage(req.pattern_id, req.target, req.opt_level, key, versions,
                                 tuple(WirePart.of(name, text) for name, text in req.parts), req.ruleset_json)
        return None, mine, self.app.signature("farm.compile", args=(message.to_wire(),), task_id=mine,
                                              queue=keys.queue(req.target))

    SHARED_TTL = 7 * 24 * 3600.0  # seconds a shared module outlives the last message that named it

    def _share(self, texts: dict[str, str]) -> None:
        """Shared modules' texts into Redis (by content key) before the messages naming them go out."""
        for key, text in texts.items():
            self.index.share_module(key, text, self.SHARED_TTL)

    def _publish(self, messages: list[Any]) -> None:
        from celery import group

        with _broker_errors(self.config):
            group(messages).apply_async()

    def _wait(self, task_id: str, target: str, deadline: float, message: Any = None,
              shared: dict[str, str] | None = None) -> TaskResult:
        """The task's result. Polled in slices: each new get() reads the stored result first, so a result
        published while the connection was down is still found once it is back. A message this coordinator
        sent (`message`) that the broker lost or orphaned is sent again (see _recover). Once no live worker
        serves the target (the last one stopped, or died and its heartbeat lapsed), NoWorkerForTarget: the
        message waits in its queue for the next worker, but this request does not wait out its timeout."""
        from celery.exceptions import TimeoutError as CeleryTimeout
        from celery.result import AsyncResult
        from kombu.exceptions import OperationalError
        from redis.exceptions import RedisError

        result = AsyncResult(task_id, app=self.app)
        try:
            since: dict[str, float] = {}
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise CompileTimeout(f"compile task {task_id} did not finish in time; is a worker running for "
                                         "its target queue?")
                try:
                    value = result.get(timeout=min(remaining, self.WAIT_SLICE), propagate=False, interval=0.05)
                except CeleryTimeout:
                    self._check_served(target)
                    if message is not None:
                        since = self._recover(task_id, message, since, shared or {})
                    continue
                except (RedisError, OperationalError, OSError) as exc:
                    log.warning("waiting for %s: the result backend is unreachable (%s); retrying", task_id, exc)
                    time.sleep(0.5)
                    continue
                return TaskResult.from_wire(value) if isinstance(value, dict) else TaskResult.failure(value)
        finally:
            _unsubscribe(result)

    WAIT_SLICE = 5.0  # seconds between looks at a task's result (and, if it is still missing, its message)
    # A message unacknowledged this long without its task starting was taken by a worker whose connection
    # dropped (a Redis restart): with prefetch 1 and late acks, a live worker starts what it takes at once.
    ORPHANED_AFTER = 30.0

    def _recover(self, task_id: str, message: Any, since: dict[str, float],
                 shared: dict[str, str]) -> dict[str, float]:
        """Send the message again if the broker lost it: a Redis killed between a worker's BRPOP and its
        bookkeeping drops it for good ("missing": neither queued, unacknowledged nor ever started, seen at two
        looks, since a message in flight is in neither for a moment), and one a worker took just before its
        connection dropped stays unacknowledged until the visibility timeout ("orphaned"). Our lock is still
        taken, so nobody else would send it. It goes again under the same task ID; the worker's content key
        makes a duplicate cost nothing. `since`: when the current state was first seen, and when the queue was
        last read ("scanned": messages carry their modules, so a long queue is read at most every
        ORPHANED_AFTER seconds; between reads, a non-empty queue leaves the state unknown)."""
        now = time.monotonic()
        scan = now - since.get("scanned", -self.ORPHANED_AFTER) >= self.ORPHANED_AFTER
        try:
            state = self._message_state(task_id, message, scan)
        except (FarmError, OSError) as exc:  # cannot tell during an outage: look again next slice
            log.debug("cannot look for %s's message: %s", task_id, exc)
            return since
        kept = {"scanned": now} if scan else {k: v for k, v in since.items() if k == "scanned"}
        if state == "unknown":
            return {**since, **kept}
        if state not in ("missing", "orphaned"):
            return kept
        if state not in since:
            return {**kept, state: now}
        if state == "orphaned" and now - since[state] < self.ORPHANED_AFTER:
            return {**since, **kept}
        log.warning("compile message %s was %s by the broker; sending it again", task_id,
                    "lost" if state == "missing" else "orphaned")
        best_effort("a republished message", lambda: self.index.incr("republished"))
        self._share(shared)  # the outage that lost the message may have lost the shared modules too
        self._publish([message])
        return kept

    def _message_state(self, task_id: str, message: Any, scan_queue: bool) -> str:
        """"started" (a worker ran it), "orphaned" (unacknowledged, never started), "queued" (at any
        priority), "missing", or "unknown" (its queue is not empty and `scan_queue` is false). "queued" too
        when the broker is not Redis: there is nothing to look at."""
        from kombu.exceptions import OperationalError

        if self.index.ever_delivered(task_id):
            return "started"
        needle = task_id.encode()
        try:
            with self.app.connection_for_read() as connection:
                channel = connection.default_channel
                client = getattr(channel, "client", None)
                if client is None or not hasattr(channel, "_q_for_pri"):
                    return "queued"
                if any(needle in item for item in client.hvals(channel.unacked_key)):  # a few in-flight ones
                    return "orphaned"
                queue = message.options.get("queue") or keys.queue(message.args[0]["target"])
                lists = [channel._q_for_pri(queue, priority) for priority in channel.priority_steps]
                if not any(client.llen(name) for name in lists):
                    return "missing"
                if not scan_queue:
                    return "unknown"
                found = any(needle in item for name in lists for item in client.lrange(name, 0, -1))
        except OperationalError as exc:
            raise BackendUnavailable(str(exc)) from None
        return "queued" if found else "missing"

    def _settle(self, req: CompileRequest, result: TaskResult, seconds: float) -> Outcome:
        key = result.key
        if result.status in (Status.COMPILED, Status.CACHED):
            meta = self.index.meta(key)
            if meta is not None:
                self.index.record(req.pattern_id, req.target, meta)
                self._record_direct(req, meta)
                return Outcome(req, key, result.status, meta, seconds=seconds)
            return Outcome(req, key, Status.FAILED, error=EVICTED_MEANWHILE, seconds=seconds)
        return Outcome(req, key, result.status, error=result.error, seconds=seconds)

    def _record_direct(self, req: CompileRequest, meta: ArtifactMeta) -> None:
        """The ruleset's direct-mode entry, keyed with the toolchain its library was built with: a node with the
        same code generator and tools then finds it without generating any IR (ArtifactBuilder.stored_ruleset)."""
        if req.fingerprint and meta.toolchain:
            direct = direct_key(req.fingerprint, resolve(req.target), req.opt_level, meta.toolchain)
            best_effort(f"the direct-mode entry of {meta.key[:12]}", lambda: self.index.record_direct(direct, meta.key))

    def artifact(self, request: CompileRequest, timeout: float = 600.0) -> ArtifactMeta:
        outcome = self.request(request, timeout)
        if outcome.meta is None:
            raise RemoteCompileFailed(f"compiling {request.pattern_id!r} for {request.target}: {outcome.error}")
        return outcome.meta


def _unsubscribe(result: Any) -> None:
    """Stop listening for a task's result now rather than in AsyncResult.__del__, which at interpreter exit runs
    with modules half torn down (a coordinator that timed out then printed an ImportError trace)."""
    try:
        result.backend.remove_pending_result(result)
    except Exception as exc:  # noqa: BLE001 - an outage may prevent it; the subscription dies with the connection
        log.debug("unsubscribing from %s: %s", result.id, exc)
    result.backend = None


def _no_worker(target: str, since: str = "") -> NoWorkerForTarget:
    return NoWorkerForTarget(f"no live worker serves target {target!r}{' ' + since if since else ''}; start one "
                             f"with `farm worker --targets {target}` (`farm workers` lists the live ones)")


@contextmanager
def _broker_errors(config: FarmConfig) -> Iterator[None]:
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        yield
    # kombu wraps most of the broker's errors; redis-py's own can still come through (the result backend's
    # subscription to a task as it is published), and they are not the built-in ConnectionError
    except (OperationalError, ConnectionError, RedisConnectionError, RedisTimeoutError) as exc:
        raise BackendUnavailable(f"the broker at {masked(config.broker_url or '')} is unreachable: {exc}") from None


# ---- worker side ----

@dataclass(frozen=True)
class Worker:
    """A worker process's side of the cluster: its builder, the coordination it takes part in (the same index
    as the builder's), and the shared modules it has fetched (content key -> text; each is fetched once)."""

    builder: ArtifactBuilder
    coordination: Coordination
    shared_modules: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, config: FarmConfig, index: ClusterIndex, store: ArtifactStore) -> Worker:
        return cls(ArtifactBuilder(config, index, store, count_requests=False), index)


@cache
def _worker() -> Worker:
    """This process's worker, on the Redis and S3 its environment names (the one a Celery task runs in)."""
    config = FarmConfig.from_env()
    index = RedisIndex(config.redis_url)  # type: ignore[arg-type]
    return Worker.of(config, index, make_store(config, index))


def start_heartbeat(name: str, targets: list[str], concurrency: int = 1, inflight: Callable[[], int] = lambda: 0,
                    worker: Worker | None = None, interval: float = HEARTBEAT_SECONDS) -> Heartbeat:
    """Announce this worker and keep it announced: its targets are served (with its tool versions, which
    coordinators key requests with) while it beats; stop() unregisters it."""
    worker = worker or _worker()
    status = worker_status(name, [t for t in targets if t], worker.builder.versions(), concurrency, inflight)
    return Heartbeat(worker.coordination, status, interval).start()


def worker_compile(wire: dict[str, Any], task_id: str, worker: Worker | None = None) -> dict[str, Any]:
    """One compile message: counted, dead-lettered past the delivery cap, else built (or found) and indexed.
    An outage shorter than the grace is ridden out here; a longer one goes back to Celery's retry. `worker`:
    this process's by default."""
    worker = worker or _worker()
    config, coordination = worker.builder.config, worker.coordination
    retried = _RidingOut(time.perf_counter() + config.outage_grace, f"worker, task {task_id}")
    message = CompileMessage.from_wire(wire)
    key = message.key
    deliveries = retried(lambda: coordination.delivered(task_id, ttl=config.task_time_limit * 20))
    if deliveries > 1:
        best_effort("a redelivery", lambda: worker.builder.index.incr("redeliveries"))
    with _lock_released(coordination, key, task_id, retried):
        if deliveries > config.max_deliveries:
            retried(lambda: coordination.dead_letter({"task_id": task_id, "key": key, "pattern_id": message.pattern_id,
                                                      "target": message.target, "deliveries": deliveries,
                                                      "at": time.time()}))
            return TaskResult(Status.DEAD_LETTER, key, f"delivered {deliveries} times (the cap is "
                              f"{config.max_deliveries}); dead-lettered").to_wire()
        return _build(worker, message, retried).to_wire()


@dataclass(frozen=True)
class _RidingOut:
    """riding_out with a fixed deadline and description: a step of one task."""

    deadline: float
    what: str

    def __call__(self, fn: Callable[[], T]) -> T:
        return riding_out(fn, self.deadline, self.what)


def _build(worker: Worker, message: CompileMessage, retried: _RidingOut) -> TaskResult:
    start = time.perf_counter()
    try:
        parts = [(p.name, p.text or _shared_module(worker, message.target, p.shared_key, retried))
                 for p in message.parts]
        artifact = retried(lambda: worker.builder.ensure_parts(parts, message.pattern_id, message.target,
                                                        message.opt_level, message.ruleset_json,
                                                        versions=message.versions))
    except BackendUnavailable:
        raise  # past the grace: Celery retries the task with backoff
    except FarmError as exc:
        return TaskResult(Status.FAILED, message.key, f"{type(exc).__name__}: {exc}")
    if artifact.meta.key != message.key:
        return TaskResult(Status.FAILED, message.key,
                          f"worker computed key {artifact.meta.key}, expected {message.key}")
    return TaskResult(Status.CACHED if artifact.cached else Status.COMPILED, message.key, sha256=artifact.meta.sha256,
                      seconds=time.perf_counter() - start)


@contextmanager
def _lock_released(coordination: Coordination, key: str, task_id: str, retried: _RidingOut) -> Iterator[None]:
    """The single-flight lock is released once the task has an outcome (built, failed, dead-lettered); a task
    that raises keeps it: Celery's retry of the same task ID still holds it, and it expires otherwise."""
    yield
    retried(lambda: coordination.release(key, task_id))


def _shared_module(worker: Worker, target: str, shared_key: str, retried: _RidingOut) -> str:
    """A shared module's text: kept from before; or this worker's own runtime for the target, when it is the
    same text (the same farm release); or fetched from Redis and checked against its key."""
    kept = worker.shared_modules
    if shared_key not in kept:
        local = runtime_ir(REGISTRY[target].triple) if target in REGISTRY else ""
        text = (local if content_key(local) == shared_key
                else retried(lambda: worker.coordination.shared_module(shared_key)))
        if text is None or content_key(text) != shared_key:
            raise SharedModuleMissing(f"module {shared_key[:16]} is not in Redis (or not what its key says); "
                                      "the next request for it shares it again")
        kept[shared_key] = text
    return kept[shared_key]


__all__ = ["CompileRequest", "Coordinator", "Outcome", "Worker", "start_heartbeat", "worker_compile"]
