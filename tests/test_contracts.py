"""One set of expectations for every cache index (SQLite, Redis, memory), every coordination backend (Redis,
memory) and every artifact store (a local directory, S3, memory), run against each: real redis-server and a real
S3-protocol server (moto) on loopback, started only for the tests that use them (`-k memory` needs none)."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from farm.cache.backends import make_store
from farm.cache.engine import Engine
from farm.cache.index import (
    GONE,
    STORED,
    UNKNOWN,
    CacheIndex,
    Claim,
    ClusterIndex,
    IndexedArtifact,
    WorkerStatus,
    build_fields,
)
from farm.cache.index.memory import MemoryIndex
from farm.cache.index.redis import RedisIndex
from farm.cache.index.sqlite import SQLiteIndex
from farm.cache.store import FORMAT_VERSION, ArtifactMeta, ArtifactStore
from farm.cache.store.local import LocalStore
from farm.cache.store.memory import MemoryStore
from farm.config import FarmConfig
from farm.errors import BackendUnavailable, InvalidArtifactKey

from .conftest import ruleset_of
from .servers import cluster_env, redis_server, s3_server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("contracts")
    with redis_server(tmp) as redis_url, s3_server() as s3:
        yield {"redis": redis_url, "s3": s3}


def cluster_index(backend: str, request: pytest.FixtureRequest) -> ClusterIndex:
    """An empty index of a backend that coordinates, as a new SQLite file is an empty index."""
    if backend == "memory":
        return MemoryIndex()
    redis_index = RedisIndex(request.getfixturevalue("servers")["redis"])
    redis_index.r.flushdb()
    return redis_index


@pytest.fixture(params=["sqlite", "redis", "memory"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> CacheIndex:
    if request.param == "sqlite":
        return SQLiteIndex(tmp_path / "index.sqlite")
    return cluster_index(request.param, request)


@pytest.fixture(params=["redis", "memory"])
def coordination(request: pytest.FixtureRequest) -> ClusterIndex:
    return cluster_index(request.param, request)


@pytest.fixture(params=["local", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "cache")
    if request.param == "memory":
        return MemoryStore(tmp_path / "node")
    servers = request.getfixturevalue("servers")
    env = cluster_env(servers["redis"], servers["s3"], tmp_path / "node", FARM_S3_BUCKET=f"c-{uuid.uuid4().hex[:12]}")
    return make_store(FarmConfig.from_env(env))


def artifact(tmp_path: Path, content: bytes = b"\x7fELF not really a library") -> tuple[Path, ArtifactMeta]:
    so = tmp_path / f"{uuid.uuid4().hex}.so"
    so.write_bytes(content)
    key = hashlib.sha256(content + b"key").hexdigest()
    meta = ArtifactMeta(key=key, sha256=hashlib.sha256(content).hexdigest(), size=len(content), target="x86-64",
                        triple="x86_64-pc-linux-gnu", cpu="x86-64", opt_level=2, pattern_ids=["p"],
                        stage_seconds={"llc": 0.25}, toolchain={"llc": "16.0.6"})
    return so, meta


# ---- every index ----

def test_an_empty_index_knows_nothing(index: CacheIndex) -> None:
    assert index.lookup("p", "x86-64") is None
    assert index.meta("0" * 64) is None
    assert index.artifact_count() == 0
    assert not any(index.counters().values())
    index.touch("0" * 64)  # a hit on an artifact the index never saw is not an error


def test_a_recorded_pattern_points_at_its_artifact_per_target(index: CacheIndex, tmp_path: Path) -> None:
    _, first = artifact(tmp_path, b"one")
    _, second = artifact(tmp_path, b"two")
    index.record("p", "x86-64", first)
    assert index.lookup("p", "x86-64") == first.key
    assert index.lookup("p", "aarch64") is None
    assert index.meta(first.key) == first
    index.record("p", "x86-64", second)  # rebuilt under a new key: the pattern moves, the old entry stays
    index.record("p", "aarch64", first)
    assert (index.lookup("p", "x86-64"), index.lookup("p", "aarch64")) == (second.key, first.key)
    assert index.meta(first.key) == first and index.artifact_count() == 2


def test_the_indexed_bytes_count_each_artifact_once(index: CacheIndex, tmp_path: Path) -> None:
    _, first = artifact(tmp_path, b"one")
    _, second = artifact(tmp_path, b"a second artifact")
    assert index.artifact_bytes() == 0
    index.record("p", "x86-64", first)
    index.record("q", "aarch64", first)  # the same artifact under another pattern and target
    index.note_hit("p", "x86-64", first)
    index.note_build("r", "x86-64", second)
    index.note_hit("r", "x86-64", second)
    assert index.artifact_bytes() == first.size + second.size


@pytest.mark.parametrize("pattern_id", ["plain", "with spaces: and colons", "ünïcødé ✓", "a" * 300, "x:y:z"])
def test_pattern_ids_are_data(index: CacheIndex, tmp_path: Path, pattern_id: str) -> None:
    _, meta = artifact(tmp_path)
    index.record(pattern_id, "x86-64", meta)
    assert index.lookup(pattern_id, "x86-64") == meta.key
    assert index.lookup(pattern_id + "x", "x86-64") is None


def test_counters_add_up(index: CacheIndex, tmp_path: Path) -> None:
    _, meta = artifact(tmp_path)
    index.incr("fallbacks", 2.5)
    index.incr("fallbacks")
    index.note_miss("p")
    index.note_build("p", "x86-64", meta)
    index.note_hit("q", "x86-64", meta)
    counters = index.counters()
    assert counters["fallbacks"] == 3.5
    assert (counters["requests"], counters["hits"], counters["misses"]) == (2, 1, 1)
    assert counters["compilations_ok"] == 1
    assert index.lookup("p", "x86-64") == index.lookup("q", "x86-64") == meta.key


def test_a_build_found_unindexed_is_indexed_and_counted_only_if_its_entry_is_new(index: CacheIndex,
                                                                                 tmp_path: Path) -> None:
    (_, found), (_, built) = artifact(tmp_path, b"found unindexed"), artifact(tmp_path, b"built and indexed")
    assert index.note_build_if_new("p", "x86-64", found)
    counted = build_fields("x86-64", found)
    assert {name: index.counters()[name] for name in counted} == counted  # as note_build counts it
    assert index.lookup("p", "x86-64") == found.key and index.artifact_bytes() == found.size
    assert not index.note_build_if_new("q", "aarch64", found)  # its entry is there: nothing done
    index.note_build("p", "x86-64", built)
    assert not index.note_build_if_new("p", "x86-64", built)
    assert index.counters()["compilations_ok"] == 2 and index.lookup("q", "aarch64") is None
    assert index.artifact_bytes() == found.size + built.size
    _, unreadable = artifact(tmp_path, b"indexed by another format")
    unreadable.format_version = FORMAT_VERSION + 1
    index.record("r", "x86-64", unreadable)
    unreadable.format_version = FORMAT_VERSION
    assert not index.note_build_if_new("r", "x86-64", unreadable)  # an entry, if one this farm cannot read
    assert index.counters()["compilations_ok"] == 2


def another_handle(index: CacheIndex) -> CacheIndex:
    """The same index through a connection of its own, as another process has it (a MemoryIndex is in this process
    alone: itself)."""
    if isinstance(index, SQLiteIndex):
        return SQLiteIndex(index.path)
    if isinstance(index, RedisIndex):
        return RedisIndex(index.url)
    return index


def test_of_finders_racing_to_index_an_unindexed_build_one_counts_it(index: CacheIndex, tmp_path: Path) -> None:
    racers = [another_handle(index) for _ in range(6)]
    builds = [artifact(tmp_path, f"found unindexed {n}".encode())[1] for n in range(10)]
    start = threading.Barrier(len(racers), timeout=30)

    def race(racer: CacheIndex) -> list[bool]:
        won = []
        for meta in builds:
            start.wait()  # every racer at the same build at once
            won.append(racer.note_build_if_new("p", "x86-64", meta))
        return won

    with ThreadPoolExecutor(len(racers)) as pool:
        won = list(pool.map(race, racers))
    assert [sum(column) for column in zip(*won)] == [1] * len(builds)
    assert index.counters()["compilations_ok"] == len(builds)
    assert index.artifact_bytes() == sum(meta.size for meta in builds)


def test_metadata_of_another_format_reads_as_a_miss(index: CacheIndex, tmp_path: Path) -> None:
    _, meta = artifact(tmp_path)
    meta.format_version = FORMAT_VERSION + 1
    index.record("p", "x86-64", meta)
    assert index.lookup("p", "x86-64") == meta.key and index.meta(meta.key) is None


def test_artifacts_are_listed_least_recently_used_first(index: CacheIndex, tmp_path: Path) -> None:
    (_, old), (_, hit), (_, new) = (artifact(tmp_path, content) for content in (b"old", b"hit later", b"new"))
    old.created_at, hit.created_at, new.created_at = 1000.0, 2000.0, 3000.0
    for pattern_id, meta in (("o", old), ("h", hit), ("n", new)):
        index.note_build(pattern_id, "x86-64", meta)
    assert index.artifacts() == [IndexedArtifact(old.key, 3, "x86-64", 1000.0, None),
                                 IndexedArtifact(hit.key, 9, "x86-64", 2000.0, None),
                                 IndexedArtifact(new.key, 3, "x86-64", 3000.0, None)]
    index.note_hit("h", "x86-64", hit)  # hit now: the most recently used
    listed = index.artifacts()
    assert [entry.key for entry in listed] == [old.key, new.key, hit.key]
    assert listed[-1].last_hit is not None and listed[-1].last_hit >= time.time() - 60


def test_a_forgotten_artifact_leaves_the_index_with_every_pattern_and_its_bytes(index: CacheIndex,
                                                                               tmp_path: Path) -> None:
    (_, gone), (_, kept) = artifact(tmp_path, b"evicted"), artifact(tmp_path, b"kept one")
    index.note_build("p", "x86-64", gone)
    index.record("q", "aarch64", gone)
    index.record("moved", "x86-64", gone)
    index.record("moved", "x86-64", kept)  # now points elsewhere: evicting `gone` must leave it alone
    assert index.forget(gone.key)
    assert index.meta(gone.key) is None and index.lookup("p", "x86-64") is None
    assert index.lookup("q", "aarch64") is None and index.lookup("moved", "x86-64") == kept.key
    assert [entry.key for entry in index.artifacts()] == [kept.key] and index.artifact_count() == 1
    assert index.artifact_bytes() == kept.size
    assert not index.forget(gone.key)  # already gone
    index.record("p", "x86-64", gone)  # built again: indexed and counted again
    assert index.artifact_bytes() == kept.size + gone.size


def test_an_artifact_used_after_eviction_began_is_not_forgotten(index: CacheIndex, tmp_path: Path) -> None:
    _, meta = artifact(tmp_path)
    meta.created_at = 1000.0
    index.note_build("p", "x86-64", meta)
    assert not index.forget(meta.key, unused_since=999.0)  # built after: kept
    began = time.time()
    index.note_hit("p", "x86-64", meta)
    assert not index.forget(meta.key, unused_since=began - 1)  # hit after: kept
    assert index.lookup("p", "x86-64") == meta.key
    assert index.forget(meta.key, unused_since=time.time() + 1)


def test_zeroed_counters_start_again_and_the_indexed_bytes_stay(index: CacheIndex, tmp_path: Path) -> None:
    _, meta = artifact(tmp_path)
    index.note_miss("p")
    index.note_build("p", "x86-64", meta)
    index.zero_counters()
    assert not any(index.counters().get(name, 0) for name in ("requests", "misses", "compilations_ok"))
    assert index.artifact_bytes() == meta.size and index.lookup("p", "x86-64") == meta.key
    index.note_hit("p", "x86-64", meta)
    assert (index.counters()["requests"], index.counters()["hits"]) == (1, 1)


def test_a_direct_key_maps_to_the_content_key_it_was_last_recorded_with(index: CacheIndex, tmp_path: Path) -> None:
    (_, first), (_, second) = artifact(tmp_path, b"one"), artifact(tmp_path, b"two")
    assert index.lookup_direct("d" * 64) is None
    index.note_build("p", "x86-64", first)
    index.record_direct("d" * 64, first.key)
    index.record_direct("e" * 64, first.key)  # two sets of inputs, one IR: one artifact
    assert index.lookup_direct("d" * 64) == index.lookup_direct("e" * 64) == first.key
    index.record_direct("d" * 64, second.key)
    assert (index.lookup_direct("d" * 64), index.lookup_direct("e" * 64)) == (second.key, first.key)
    assert index.lookup_direct("f" * 64) is None and index.lookup("p", "x86-64") == first.key


def test_a_forgotten_artifact_takes_the_direct_keys_still_pointing_at_it(index: CacheIndex, tmp_path: Path) -> None:
    (_, gone), (_, kept) = artifact(tmp_path, b"evicted"), artifact(tmp_path, b"kept one")
    gone.created_at = 1000.0
    for meta in (gone, kept):
        index.note_build("p", "x86-64", meta)
    index.record_direct("a" * 64, gone.key)
    index.record_direct("b" * 64, kept.key)
    index.record_direct("c" * 64, gone.key)
    index.record_direct("c" * 64, kept.key)  # now points elsewhere: evicting `gone` must leave it alone
    assert not index.forget(gone.key, unused_since=999.0)  # built after: kept, and so are its direct keys
    assert index.lookup_direct("a" * 64) == gone.key
    assert index.forget(gone.key)
    assert index.lookup_direct("a" * 64) is None
    assert (index.lookup_direct("b" * 64), index.lookup_direct("c" * 64)) == (kept.key, kept.key)
    index.record_direct("a" * 64, gone.key)  # built again: recorded again
    assert index.lookup_direct("a" * 64) == gone.key


# ---- every coordination backend ----

def test_a_lock_has_one_holder_until_that_holder_releases_it(coordination: ClusterIndex) -> None:
    key = "a" * 64
    assert coordination.inflight() == 0
    assert coordination.acquire(key, "task-1", ttl=60) == "task-1"
    assert coordination.acquire(key, "task-2", ttl=60) == "task-1"  # the one to wait on
    assert coordination.acquire(key, "task-1", ttl=60) == "task-1"  # a retried attempt knows its own lock
    assert coordination.acquire("b" * 64, "task-3", ttl=60) == "task-3" and coordination.inflight() == 2
    coordination.release(key, "task-2")  # not the holder: nothing happens
    assert coordination.acquire(key, "task-2", ttl=60) == "task-1"
    coordination.release(key, "task-1")
    assert coordination.acquire(key, "task-2", ttl=60) == "task-2"


def test_a_lock_whose_holder_vanished_expires(coordination: ClusterIndex) -> None:
    key = "c" * 64
    assert coordination.acquire(key, "lost-task", ttl=0.15) == "lost-task"
    time.sleep(0.3)
    assert coordination.inflight() == 0
    assert coordination.acquire(key, "next-task", ttl=60) == "next-task"
    coordination.release(key, "lost-task")  # the expired holder's late release leaves the new lock alone
    assert coordination.acquire(key, "third-task", ttl=60) == "next-task"


def test_deliveries_are_counted_per_message_and_expire_with_it(coordination: ClusterIndex) -> None:
    assert not coordination.ever_delivered("t1")
    assert [coordination.delivered("t1", ttl=60) for _ in range(3)] == [1, 2, 3]
    assert coordination.delivered("t2", ttl=0.15) == 1
    assert coordination.ever_delivered("t1") and coordination.ever_delivered("t2")
    time.sleep(0.3)
    assert not coordination.ever_delivered("t2") and coordination.delivered("t2", ttl=60) == 1
    assert coordination.ever_delivered("t1")


def test_dead_letters_come_back_in_arrival_order_and_are_counted(coordination: ClusterIndex) -> None:
    assert coordination.dead_letters() == []
    records = [{"task_id": f"t{i}", "key": "d" * 64, "pattern_id": "ünï ✓", "deliveries": 4, "at": 1.5 + i}
               for i in range(3)]
    for record in records:
        coordination.dead_letter(record)
    records[0]["task_id"] = "changed after the fact"  # what was stored is a copy
    assert [r["task_id"] for r in coordination.dead_letters()] == ["t0", "t1", "t2"]
    assert coordination.dead_letters()[1] == records[1]
    assert coordination.counters()["dead_letters"] == 3


def test_toolchains_are_published_per_target_and_name_the_served_queues(coordination: ClusterIndex) -> None:
    assert coordination.toolchain("x86-64") is None and coordination.queue_depths() == {}
    coordination.publish_toolchain("x86-64", {"llc": "16.0.6", "opt": "16.0.6"})
    coordination.publish_toolchain("aarch64", {"llc": "16.0.6"})
    coordination.publish_toolchain("x86-64", {"llc": "17.0.1"})  # a worker of a newer release replaces it
    assert coordination.toolchain("x86-64") == {"llc": "17.0.1"}
    assert coordination.toolchain("aarch64") == {"llc": "16.0.6"}
    assert coordination.queue_depths() == {"aarch64": 0, "x86-64": 0}  # served, nothing waiting


def status_of(name: str, *targets: str) -> WorkerStatus:
    return WorkerStatus(name, "build-host", 4242, targets, {"llc": "16.0.6"}, concurrency=2, inflight=1,
                        started=1.0e9, seen=1.0e9 + 5)


def test_live_workers_are_listed_and_serve_their_targets_until_they_stop_or_lapse(coordination: ClusterIndex) -> None:
    assert coordination.workers() == []
    short, long = status_of("short@h", "x86-64"), status_of("long@h", "x86-64", "aarch64")
    coordination.heartbeat(short, ttl=0.2)
    coordination.heartbeat(long, ttl=60)
    assert coordination.workers() == [long, short]  # by name, as they said it
    assert coordination.toolchain("x86-64") == coordination.toolchain("aarch64") == {"llc": "16.0.6"}
    time.sleep(0.4)
    assert coordination.workers() == [long]  # short stopped beating: it lapsed
    assert coordination.toolchain("x86-64") is not None  # long still serves it
    other = status_of("other@h", "x86-64")
    coordination.heartbeat(other, ttl=60)
    coordination.forget_worker("other@h")  # stopping: unlisted at once; long still serves x86-64
    assert coordination.workers() == [long] and coordination.toolchain("x86-64") is not None
    coordination.forget_worker("long@h")  # the last one for both targets
    assert coordination.workers() == []
    assert coordination.toolchain("x86-64") is None and coordination.toolchain("aarch64") is None
    assert coordination.queue_depths() == {"aarch64": 0, "x86-64": 0}  # queues of targets ever served
    coordination.forget_worker("never-seen@h")  # nothing to do


def test_the_hot_set_ranks_patterns_by_requests_and_firings(coordination: ClusterIndex, tmp_path: Path) -> None:
    _, meta = artifact(tmp_path)
    coordination.note_hot("fired", 40)
    coordination.note_miss("missed")
    coordination.note_miss("missed")
    coordination.note_hit("hit", "x86-64", meta, hot=True)
    coordination.note_hit("not ranked", "x86-64", meta)
    assert coordination.hot(10) == [("fired", 40), ("missed", 2), ("hit", 1)]
    assert coordination.hot(1) == [("fired", 40)]


def test_a_request_is_a_miss_that_takes_the_lock_until_the_artifact_is_indexed(coordination: ClusterIndex,
                                                                               tmp_path: Path) -> None:
    _, meta = artifact(tmp_path)
    request = lambda pattern, task, evidence: coordination.hit_or_acquire(  # noqa: E731
        meta.key, pattern, "x86-64", task, 60, evidence)
    assert request("p", "task-1", UNKNOWN) == Claim(holder="task-1")  # not indexed: nothing to ask the store
    assert request("q", "task-2", meta.sha256) == Claim(holder="task-1")  # the one to wait on
    assert request("p", "task-1", STORED) == Claim(holder="task-1")  # a retried attempt knows its own lock
    assert coordination.inflight() == 1 and coordination.lookup("p", "x86-64") is None
    counters = coordination.counters()
    assert (counters["requests"], counters["misses"], counters.get("hits", 0)) == (3, 3, 0)
    assert dict(coordination.hot(10)) == {"p": 2, "q": 1}
    coordination.note_build("p", "x86-64", meta)  # the worker built it...
    coordination.release(meta.key, "task-1")  # ...and let go
    assert request("q", "task-3", STORED) == Claim(meta)  # counted as note_hit(hot=True) counts it
    assert coordination.inflight() == 0 and coordination.lookup("q", "x86-64") == meta.key
    counters = coordination.counters()
    assert (counters["requests"], counters["misses"], counters["hits"]) == (4, 3, 1)
    assert dict(coordination.hot(10)) == {"p": 2, "q": 2}
    (entry,) = coordination.artifacts()
    assert entry.last_hit is not None and coordination.artifact_bytes() == meta.size  # the hit adds no bytes


def test_a_request_hits_on_the_nodes_copy_only_if_it_is_the_indexed_library(coordination: ClusterIndex,
                                                                            tmp_path: Path) -> None:
    _, meta = artifact(tmp_path)
    coordination.note_build("p", "x86-64", meta)
    request = lambda evidence, task="task-1": coordination.hit_or_acquire(  # noqa: E731
        meta.key, "p", "x86-64", task, 60, evidence)
    assert request(meta.sha256) == Claim(meta)  # the node's copy is the library: no need to ask the store
    before = coordination.counters()
    for evidence in ("0" * 64, UNKNOWN):  # other bytes, or no copy: nothing counted or taken; the caller asks the store
        assert request(evidence) == Claim() and Claim().unsettled
    assert coordination.counters() == before and coordination.inflight() == 0
    assert request(GONE) == Claim(holder="task-1")  # indexed, but the store lost the object: a miss, rebuilt
    assert request(STORED, "task-2") == Claim(meta)  # while it is rebuilt, another node may still hit
    counters = coordination.counters()
    assert (counters["requests"], counters["hits"], counters["misses"]) == (3, 2, 1)
    assert dict(coordination.hot(10)) == {"p": 3}


def test_a_request_for_metadata_of_another_format_or_unreadable_is_a_miss(coordination: ClusterIndex,
                                                                          tmp_path: Path) -> None:
    (_, other), (_, unreadable) = artifact(tmp_path, b"other"), artifact(tmp_path, b"unreadable")
    other.format_version = FORMAT_VERSION + 1
    unreadable.pattern_ids = "not a list"  # type: ignore[assignment]
    for meta in (other, unreadable):
        coordination.record("p", "x86-64", meta)
        assert coordination.hit_or_acquire(meta.key, "p", "x86-64", "task-1", 60, STORED) == Claim(holder="task-1")
    assert coordination.counters()["misses"] == 2 and coordination.inflight() == 2


def test_a_shared_module_lives_its_ttl_and_sharing_it_again_extends_it(coordination: ClusterIndex) -> None:
    short, extended = "1" * 64, "2" * 64
    assert coordination.shared_module(short) is None
    coordination.share_module(short, "; runtime A", ttl=1)
    coordination.share_module(extended, "; runtime B", ttl=1)
    coordination.share_module(extended, "; runtime B", ttl=60)
    assert coordination.shared_module(short) == "; runtime A"
    time.sleep(1.2)
    assert coordination.shared_module(short) is None
    assert coordination.shared_module(extended) == "; runtime B"


# ---- every store ----

def test_a_store_holds_what_was_put_until_deleted(store: ArtifactStore, tmp_path: Path) -> None:
    so, meta = artifact(tmp_path)
    assert store.fetch(meta.key) is None and not store.exists(meta.key)
    store.put(so, meta)
    assert store.exists(meta.key)
    fetched = store.fetch(meta.key)
    assert fetched is not None
    path, stored = fetched
    assert path.read_bytes() == so.read_bytes() and stored == meta
    store.delete(meta.key)
    assert store.fetch(meta.key) is None and not store.exists(meta.key)
    store.delete(meta.key)  # deleting what is not there is not an error


def test_a_store_keeps_artifacts_apart(store: ArtifactStore, tmp_path: Path) -> None:
    (so_a, a), (so_b, b) = artifact(tmp_path, b"a"), artifact(tmp_path, b"b")
    store.put(so_a, a)
    store.put(so_b, b)
    store.delete(a.key)
    fetched = store.fetch(b.key)
    assert fetched is not None and fetched[0].read_bytes() == b"b" and not store.exists(a.key)


def test_a_store_knows_the_sha256_of_its_nodes_own_copy(store: ArtifactStore, tmp_path: Path) -> None:
    so, meta = artifact(tmp_path)
    assert store.held_sha256(meta.key) is None
    store.put(so, meta)
    assert store.held_sha256(meta.key) == meta.sha256
    store.local_path(meta.key).write_bytes(b"changed since")  # hashed on each call: the bytes there now
    assert store.held_sha256(meta.key) == hashlib.sha256(b"changed since").hexdigest()
    store.delete(meta.key)
    assert store.held_sha256(meta.key) is None


@pytest.mark.parametrize("key", ["", "../../etc/passwd", "A" * 64, "0" * 63, "0" * 64 + "/x"])
def test_a_store_refuses_keys_that_are_not_content_keys(store: ArtifactStore, key: str) -> None:
    for call in (store.fetch, store.exists, store.delete, store.held_sha256):
        with pytest.raises(InvalidArtifactKey):
            call(key)


# ---- counting is best effort ----

class UnreachableCounters:
    def incr(self, counter: str, amount: float = 1) -> None:
        raise BackendUnavailable("Redis at redis://127.0.0.1:1 is unreachable: connection refused")


class IndexWithUnreachableCounters(SQLiteIndex):
    """An index that answers lookups but cannot count (the shared counters' Redis is down)."""

    def incr(self, counter: str, amount: float = 1) -> None:
        UnreachableCounters().incr(counter, amount)

    def note_hit(self, pattern_id: str, target: str, meta: ArtifactMeta, hot: bool = False) -> None:
        self.incr("hits")


def test_a_hit_stays_a_hit_when_counting_fails(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    rules = ruleset_of("rule counted: (f ?x) => ?x")
    built = engine.compile(rules, "counted")
    engine.builder.index = IndexWithUnreachableCounters(engine.config.cache_dir / "index.sqlite")
    again = engine.compile(rules, "counted")
    assert again.cached and again.meta.key == built.meta.key
    assert "was not counted" in caplog.text


def test_a_store_fetch_stays_a_fetch_when_counting_fails(servers: dict[str, str], tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    env = cluster_env(servers["redis"], servers["s3"], tmp_path / "node", FARM_S3_BUCKET=f"c-{uuid.uuid4().hex[:12]}")
    store = make_store(FarmConfig.from_env(env), UnreachableCounters())
    so, meta = artifact(tmp_path)
    store.put(so, meta)
    fetched = store.fetch(meta.key)
    assert fetched is not None and fetched[1] == meta
    assert "was not counted" in caplog.text
