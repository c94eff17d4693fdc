"""The coordinator's logic without any server: the in-memory index and store (farm/cache/index/memory.py,
farm/cache/store/memory.py) stand in for Redis and S3, and a Celery app whose broker is this process delivers each
message at once to the worker serving its queue; results cross Celery's in-memory result backend as JSON. Workers
build for real (llvmlite in process). tests/test_cluster.py runs the same paths on real servers and processes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, Task
from celery.exceptions import Ignore

from farm.cache import keys
from farm.cache.builder import ArtifactBuilder
from farm.cache.index.memory import MemoryIndex
from farm.cache.store.memory import MemoryBucket, MemoryStore
from farm.cluster.coordinator import CompileRequest, Coordinator, Outcome, Worker, start_heartbeat, worker_compile
from farm.cluster.heartbeat import Heartbeat
from farm.cluster.messages import CompileMessage, Status, TaskResult, WirePart, content_key
from farm.config import FarmConfig
from farm.errors import NoWorkerForTarget

from .conftest import ruleset_of

TARGETS = ("x86-64", "aarch64")


class InProcessCelery(Celery):
    """A Celery app whose broker is this process: a message is delivered when it is published (eager), as JSON, to
    the worker serving the queue the coordinator sent it to. A message no worker serves, or one the test has the
    broker lose, is never run and leaves no result, as on a real broker."""

    def __init__(self) -> None:
        super().__init__("farm-tests", broker="memory://", backend="cache+memory://", set_as_current=False)
        self.conf.update(task_always_eager=True, task_store_eager_result=True, task_serializer="json",
                         result_serializer="json", accept_content=["json"])
        self.workers: dict[str, Worker] = {}  # queue -> the worker consuming it
        self.queue_of: dict[str, str] = {}  # task ID -> the queue its message was sent to
        self.received: list[tuple[str, dict[str, Any]]] = []  # (queue, message) as each worker got it
        self.lost: list[str] = []  # task IDs of messages the broker dropped
        self.losing = 0  # how many of the next messages to drop
        self.deliveries = 1  # how often the broker delivers each message (more: a worker died under it)
        self.gate: threading.Event | None = None  # when set, workers start only once it is
        self.started = threading.Event()
        self.body: Callable[[Task, dict[str, Any]], dict[str, Any]] = self._deliver  # what a message runs

        def compile_artifact(task: Task, message: dict[str, Any]) -> dict[str, Any]:
            return self.body(task, message)

        # Named as workers/tasks.py names it; not shared: Celery would give it to every app of the process
        self.task(name="farm.compile", bind=True, shared=False)(compile_artifact)

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        signature = super().signature(*args, **kwargs)
        self.queue_of[signature.id] = kwargs["queue"]
        return signature

    def _deliver(self, task: Task, message: dict[str, Any]) -> dict[str, Any]:
        task_id = task.request.id
        worker = self.workers.get(self.queue_of[task_id])
        if worker is None or self.losing:
            self.losing = max(self.losing - 1, 0)
            self.lost.append(task_id)
            raise Ignore()  # no result is stored: the coordinator sees a message nobody ran
        self.received.append((self.queue_of[task_id], message))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(5)
        wire = json.loads(json.dumps(message))
        results = [worker_compile(wire, task_id, worker) for _ in range(self.deliveries)]
        return results[-1]


def node_config(cache_dir: Path, **settings: Any) -> FarmConfig:
    return FarmConfig(cache_dir=cache_dir, opt_level=0, compile_path="inprocess", **settings)


class Farm:
    """One cluster in this process: a shared index and bucket, workers by target, coordinators on demand."""

    def __init__(self, root: Path, index: MemoryIndex | None = None) -> None:
        self.root = root
        self.index = index or MemoryIndex()
        self.bucket = MemoryBucket()
        self.app = InProcessCelery()
        self.workers: dict[str, Worker] = {}
        self.heartbeats: dict[str, Heartbeat] = {}

    def node(self, name: str) -> MemoryStore:
        return MemoryStore(self.root / name, self.bucket)

    def start_worker(self, target: str, **settings: Any) -> Worker:
        worker = Worker.of(node_config(self.root / f"worker-{target}", **settings), self.index,
                           self.node(f"worker-{target}"))
        self.heartbeats[target] = start_heartbeat(f"worker-{target}", [target], worker=worker)
        self.workers[target] = self.app.workers[keys.queue(target)] = worker
        return worker

    def stop_worker(self, target: str) -> None:
        self.heartbeats.pop(target).stop()
        del self.workers[target], self.app.workers[keys.queue(target)]

    def coordinator(self, name: str = "coordinator") -> Coordinator:
        coordinator = Coordinator(node_config(self.root / name), self.app, self.index, self.node(name))
        coordinator.WAIT_SLICE = 0.05
        return coordinator

    def sent(self, target: str) -> list[str]:
        """The pattern IDs of the messages the worker for `target` received."""
        return [message["pattern_id"] for queue, message in self.app.received if queue == keys.queue(target)]


@pytest.fixture
def farm(tmp_path: Path) -> Farm:
    farm = Farm(tmp_path)
    for target in TARGETS:
        farm.start_worker(target)
    return farm


def request_for(name: str, target: str = "x86-64", constant: int = 1) -> CompileRequest:
    return CompileRequest.for_ruleset(name, ruleset_of(f"rule {name}: (f ?x {constant}) => (g ?x)"), target, 0)


def statuses(outcomes: list[Outcome]) -> list[str]:
    return [f"{o.status}{': ' + o.error if o.error else ''}" for o in outcomes]


def test_each_request_goes_to_its_targets_queue_then_hits(farm: Farm) -> None:
    coordinator = farm.coordinator()
    requests = [request_for(name, target) for name in ("one", "two") for target in TARGETS]
    first = coordinator.ensure(requests, timeout=30)
    assert statuses(first) == ["compiled"] * 4
    assert farm.sent("x86-64") == farm.sent("aarch64") == ["one", "two"]
    for outcome in first:
        assert outcome.meta is not None and outcome.meta.target == outcome.request.target
        assert farm.index.lookup(outcome.request.pattern_id, outcome.request.target) == outcome.key
        assert farm.bucket.get(outcome.key) is not None
    again = farm.coordinator("another-node").ensure(requests, timeout=30)
    assert statuses(again) == ["cached"] * 4 and len(farm.app.received) == 4  # nothing sent
    assert [o.key for o in again] == [o.key for o in first]
    counters = farm.index.counters()
    assert (counters["compilations_ok:x86-64"], counters["compilations_ok:aarch64"], counters["hits"]) == (2, 2, 4)
    assert farm.index.inflight() == 0 and dict(farm.index.hot(10)) == {"one": 4, "two": 4}  # 2 misses, 2 hits


def test_the_workers_result_crosses_the_wire_intact(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    request = request_for("wired")
    results: list[dict[str, Any]] = []
    coordinator = farm.coordinator()
    result_of = coordinator._wait

    def recorded(task_id: str, *args: Any) -> TaskResult:
        result = result_of(task_id, *args)
        results.append(json.loads(json.dumps(farm.app.AsyncResult(task_id).get())))
        return result

    monkeypatch.setattr(coordinator, "_wait", recorded)
    outcome = coordinator.request(request, timeout=30)
    (wire,) = results
    result = TaskResult.from_wire(wire)
    assert (result.status, result.key) == (Status.COMPILED, outcome.key) and result.error == ""
    assert outcome.meta is not None and result.sha256 == outcome.meta.sha256 and result.seconds > 0
    (_, message), = farm.app.received
    assert CompileMessage.from_wire(message).key == outcome.key


def test_a_key_being_compiled_is_waited_on_not_compiled_again(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two coordinators want the same artifact: the first takes the key's lock and sends the message; the second
    finds the lock taken and waits on the first one's task. One message, one build, two answers."""
    request = request_for("once")
    farm.app.gate = threading.Event()
    first, second = farm.coordinator("first"), farm.coordinator("second")
    waiting = threading.Event()
    wait = second._wait

    def second_waits(task_id: str, *args: Any) -> TaskResult:
        waiting.set()
        return wait(task_id, *args)

    monkeypatch.setattr(second, "_wait", second_waits)
    outcomes: dict[str, Outcome] = {}

    def ask(name: str, coordinator: Coordinator) -> None:
        outcomes[name] = coordinator.request(request, timeout=30)

    threads = [threading.Thread(target=ask, args=(name, coordinator))
               for name, coordinator in (("first", first), ("second", second))]
    threads[0].start()
    assert farm.app.started.wait(5)  # the first one's message is with the worker, held at the gate
    threads[1].start()
    assert waiting.wait(5)
    assert farm.index.inflight() == 1
    farm.app.gate.set()
    for thread in threads:
        thread.join(10)
    assert statuses([outcomes["first"], outcomes["second"]]) == ["compiled", "compiled"]
    assert outcomes["first"].key == outcomes["second"].key and farm.sent("x86-64") == ["once"]
    assert farm.index.counters()["compilations_ok"] == 1 and farm.index.inflight() == 0
    assert farm.index.lookup("once", "x86-64") == outcomes["first"].key


def test_a_failed_build_is_reported_and_releases_its_lock(farm: Farm) -> None:
    """Keyed with a toolchain the worker does not run (a worker of another release announced it), the worker
    refuses the job; the lock is released, so the next request sends the message again."""
    farm.index.publish_toolchain("x86-64", {"llc": "0.0.1"})
    coordinator = farm.coordinator()
    request = request_for("mismatched")
    failed = coordinator.request(request, timeout=30)
    assert failed.status == Status.FAILED and "ToolchainMismatch" in failed.error and failed.meta is None
    assert farm.index.inflight() == 0 and farm.index.lookup("mismatched", "x86-64") is None
    assert coordinator.request(request, timeout=30).status == Status.FAILED
    assert farm.sent("x86-64") == ["mismatched", "mismatched"]


def test_a_message_delivered_past_the_cap_is_dead_lettered(tmp_path: Path) -> None:
    """A broker that delivers the message three times (its workers died under it twice) to a worker whose cap is
    two: the first delivery builds, the second finds it built, the third is dead-lettered, and that is the
    answer the coordinator gets."""
    farm = Farm(tmp_path)
    farm.start_worker("x86-64", max_deliveries=2)
    farm.app.deliveries = 3
    outcome = farm.coordinator().request(request_for("redelivered"), timeout=30)
    assert outcome.status == Status.DEAD_LETTER and "delivered 3 times (the cap is 2)" in outcome.error
    (letter,) = farm.index.dead_letters()
    assert (letter["pattern_id"], letter["key"], letter["deliveries"]) == ("redelivered", outcome.key, 3)
    counters = farm.index.counters()
    assert (counters["redeliveries"], counters["dead_letters"], counters["compilations_ok"]) == (2, 1, 1)
    assert farm.index.inflight() == 0


def test_a_task_that_raises_is_a_failure_and_keeps_its_lock(farm: Farm) -> None:
    """Celery retries a task that raised under the same task ID, which still holds the lock (it expires
    otherwise); the coordinator reports what the task raised."""
    def raising(task: Task, message: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("the worker's disk is full")

    farm.app.body = raising
    outcome = farm.coordinator().request(request_for("raised"), timeout=30)
    assert outcome.status == Status.FAILED and outcome.error == "RuntimeError: the worker's disk is full"
    assert farm.index.inflight() == 1


def test_a_result_of_another_wire_version_is_a_failure_that_says_so(farm: Farm) -> None:
    def newer_worker(task: Task, message: dict[str, Any]) -> dict[str, Any]:
        return {"v": 99, "status": "compiled", "key": message["key"]}

    farm.app.body = newer_worker
    outcome = farm.coordinator().request(request_for("newer"), timeout=30)
    assert outcome.status == Status.FAILED and "wire version 99" in outcome.error


@pytest.mark.parametrize("fate", ["missing", "orphaned"])
def test_a_message_the_broker_lost_is_sent_again(farm: Farm, fate: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker drops the first publish. What the coordinator sees of it (neither queued nor started, or
    unacknowledged and never started) is what Coordinator._message_state reads from a Redis broker; here it is
    given, with the delivery count (the real index) saying whether a worker ever started it."""
    coordinator = farm.coordinator()
    coordinator.ORPHANED_AFTER = 0.1
    monkeypatch.setattr(coordinator, "_message_state",
                        lambda task_id, message, scan: "started" if farm.index.ever_delivered(task_id) else fate)
    farm.app.losing = 1
    outcome = coordinator.request(request_for(f"lost_{fate}"), timeout=5)
    assert outcome.status == Status.COMPILED and len(farm.app.lost) == 1
    assert farm.sent("x86-64") == [f"lost_{fate}"]  # the same message, under the same task ID
    assert farm.app.received[0][1]["key"] == outcome.key
    assert farm.index.counters()["republished"] == 1 and farm.index.inflight() == 0


def test_a_target_no_worker_serves_is_a_clear_error(farm: Farm) -> None:
    with pytest.raises(NoWorkerForTarget, match="farm worker --targets x86-64-v4"):
        farm.coordinator().request(request_for("lonely", "x86-64-v4"), timeout=30)
    assert farm.app.received == [] and farm.index.inflight() == 0


def test_a_request_whose_targets_last_worker_stops_fails_fast(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message waits in its queue (nobody takes it); the only worker for its target stops meanwhile. The
    request fails at the next look with NoWorkerForTarget instead of waiting out its timeout."""
    coordinator = farm.coordinator()
    monkeypatch.setattr(coordinator, "_message_state", lambda task_id, message, scan: "queued")
    farm.app.losing = 1
    stopping = threading.Timer(0.3, farm.stop_worker, ["x86-64"])
    stopping.start()
    start = time.monotonic()
    with pytest.raises(NoWorkerForTarget, match="'x86-64' any more"):
        coordinator.request(request_for("abandoned"), timeout=60)
    stopping.join()
    assert time.monotonic() - start < 5
    assert [w.name for w in farm.index.workers()] == ["worker-aarch64"]
    assert farm.index.toolchain("x86-64") is None and farm.index.toolchain("aarch64") is not None


class CountingIndex(MemoryIndex):
    """Counts the shared-module reads: how often a worker fetched one."""

    def __init__(self) -> None:
        super().__init__()
        self.module_reads = 0

    def shared_module(self, content_key: str) -> str | None:
        self.module_reads += 1
        return super().shared_module(content_key)


def with_runtime(request: CompileRequest, runtime: str) -> CompileRequest:
    parts = tuple((name, runtime if name == "runtime" else text) for name, text in request.parts)
    return CompileRequest(request.pattern_id, request.target, request.opt_level, parts, request.ruleset_json)


def test_the_runtime_travels_by_content_key_and_a_worker_fetches_it_once(tmp_path: Path) -> None:
    """A runtime this worker does not generate itself (a coordinator of another release) is shared in the index
    under its content key; messages name it, the worker fetches it once, checks it and keeps it."""
    index = CountingIndex()
    farm = Farm(tmp_path, index)
    worker = farm.start_worker("x86-64")
    runtime = dict(request_for("a").parts)["runtime"] + "\n; the runtime of another farm release\n"
    shared = content_key(runtime)
    coordinator = farm.coordinator()
    outcomes = [coordinator.request(with_runtime(request_for(name, constant=i), runtime), timeout=30)
                for i, name in enumerate(("a", "b"))]
    assert statuses(outcomes) == ["compiled", "compiled"]
    for _, message in farm.app.received:
        runtime_part, rules_part = CompileMessage.from_wire(message).parts
        assert (runtime_part.name, runtime_part.text, runtime_part.shared_key) == ("runtime", "", shared)
        assert rules_part.text and not rules_part.shared_key
    assert farm.index.shared_module(shared) == runtime
    assert worker.shared_modules == {shared: runtime}
    assert index.module_reads == 2  # the worker's one fetch, and the read just above


def test_a_message_naming_a_module_nobody_shared_fails_and_builds_nothing(tmp_path: Path) -> None:
    farm = Farm(tmp_path)
    worker = farm.start_worker("x86-64")
    request = with_runtime(request_for("unshared"), "; a runtime nobody shared\n")
    key, versions = farm.coordinator().key_for(request)
    message = CompileMessage(request.pattern_id, "x86-64", 0, key, versions,
                             tuple(WirePart.of(name, text) for name, text in request.parts), request.ruleset_json)
    result = TaskResult.from_wire(worker_compile(message.to_wire(), "task-unshared", worker))
    assert result.status == Status.FAILED and "SharedModuleMissing" in result.error
    assert farm.index.meta(key) is None and farm.bucket.get(key) is None


def test_an_indexed_artifact_whose_object_is_gone_is_compiled_again(farm: Farm) -> None:
    coordinator = farm.coordinator()
    request = request_for("repaired")
    built = coordinator.request(request, timeout=30)
    farm.bucket.delete(built.key)
    repaired = coordinator.request(request, timeout=30)
    assert (repaired.status, repaired.key) == (Status.COMPILED, built.key) and farm.bucket.get(built.key) is not None
    assert farm.sent("x86-64") == ["repaired", "repaired"]


def asked_store(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys the coordinator asks its store about (the HEADs an S3 store would send), as they are asked."""
    asked: list[str] = []
    exists = coordinator.store.exists
    monkeypatch.setattr(coordinator.store, "exists", lambda key: asked.append(key) or exists(key))
    return asked


def test_a_node_holding_the_indexed_library_hits_without_asking_the_store(farm: Farm,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    request = request_for("held")
    first = farm.coordinator()
    asked = asked_store(first, monkeypatch)
    built = first.request(request, timeout=30)
    assert built.status == Status.COMPILED and asked == []  # a miss (not indexed) asks the store nothing
    holder = farm.coordinator("worker-x86-64")  # on the node whose worker built it, so it holds a copy
    asked = asked_store(holder, monkeypatch)
    farm.bucket.delete(built.key)  # the store lost it: a node holding a copy still serves it
    assert holder.request(request, timeout=30).status == Status.CACHED and asked == []
    assert farm.sent("x86-64") == ["held"] and farm.index.counters()["hits"] == 1
    elsewhere = farm.coordinator("another-node")  # no copy there: it asks the store, which lost it, so it is rebuilt
    asked = asked_store(elsewhere, monkeypatch)
    assert elsewhere.request(request, timeout=30).status == Status.COMPILED and asked == [built.key]
    assert farm.sent("x86-64") == ["held", "held"] and farm.bucket.get(built.key) is not None


def test_a_node_whose_copy_is_not_the_indexed_library_asks_the_store(farm: Farm,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    request = request_for("stale")
    built = farm.coordinator().request(request, timeout=30)
    node = farm.coordinator("stale-node")
    node.store.local_path(built.key).parent.mkdir(parents=True)
    node.store.local_path(built.key).write_bytes(b"a build of other bytes")
    asked = asked_store(node, monkeypatch)
    before = farm.index.counters()
    assert node.request(request, timeout=30).status == Status.CACHED and asked == [built.key]
    after = farm.index.counters()
    assert (after["requests"] - before["requests"], after["hits"] - before.get("hits", 0)) == (1, 1)  # once


def test_the_worker_side_counts_redeliveries_of_one_task(tmp_path: Path) -> None:
    farm = Farm(tmp_path)
    worker = farm.start_worker("x86-64", max_deliveries=3)
    request = request_for("counted")
    key, versions = farm.coordinator().key_for(request)
    message = CompileMessage(request.pattern_id, "x86-64", 0, key, versions,
                             tuple(WirePart.of(name, text) for name, text in request.parts), request.ruleset_json)
    deliver: Callable[[], str] = lambda: worker_compile(message.to_wire(), "task-again", worker)["status"]  # noqa: E731
    outcomes = []
    for _ in range(4):
        assert farm.index.acquire(key, "task-again", ttl=60) == "task-again"  # the coordinator's lock, held again
        outcomes.append(deliver())
        assert farm.index.inflight() == 0  # each outcome released it
    assert outcomes == ["compiled", "cached", "cached", "dead-letter"]


def test_a_ruleset_the_cluster_built_is_a_direct_hit_on_a_node(farm: Farm) -> None:
    """The coordinator records the ruleset's direct-mode entry: a node finds the library without generating IR."""
    ruleset = ruleset_of("rule direct: (f ?x 7) => (g ?x)")
    [outcome] = farm.coordinator().ensure([CompileRequest.for_ruleset("direct", ruleset, "x86-64", 0)], timeout=30)
    assert outcome.status == Status.COMPILED and outcome.meta is not None
    node = ArtifactBuilder(node_config(farm.root / "node"), farm.index, farm.node("node"))
    found = node.stored_ruleset(ruleset, "direct", "x86-64", opt_level=0, direct_only=True)
    assert found is not None and found.cached and found.meta.key == outcome.key
    other = ruleset_of("rule direct: (f ?x 8) => (g ?x)")  # another ruleset has no entry
    assert node.stored_ruleset(other, "direct", "x86-64", opt_level=0, direct_only=True) is None
