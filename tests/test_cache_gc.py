"""Caches within bounds (issue 13, section 1): eviction order, the size limit enforced after each store, readers that
rebuild what was evicted under them, and the shared tier on a real redis-server and S3 server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.cache.backends import make_store
from farm.cache.builder import ArtifactBuilder
from farm.cache.engine import Engine
from farm.cache.gc import CLEAR, LocalTier, Policy, gc_local, gc_shared
from farm.cache.index.redis import RedisIndex
from farm.cache.index.sqlite import SQLiteIndex
from farm.cache.inventory import clear, collect, describe, listing, why_miss, zero_stats
from farm.cache.objcache import UsedObjectCache
from farm.cache.store import ArtifactMeta
from farm.cache.store.local import LocalStore
from farm.cluster.messages import Status
from farm.config import FarmConfig, duration
from farm.errors import ConfigError, InvalidArgument, InvalidSetting
from farm.lang.terms import TermGraph

from .conftest import EXAMPLES, ruleset_of
from .servers import cluster_env, redis_server, s3_server
from .test_cli import farm
from .test_coordinator import Farm, request_for


def local_tier(root: Path) -> LocalTier:
    return LocalTier(LocalStore(root), UsedObjectCache(root / "objcache"), SQLiteIndex(root / "index.sqlite"))


def put_artifact(tier: LocalTier, name: str, size: int, used: float) -> str:
    """An artifact of `size` library bytes stored and indexed, last used at `used` (seconds since the epoch)."""
    content = name.encode().ljust(size, b".")
    key = hashlib.sha256(content).hexdigest()
    so = tier.store.root / f"{name}.tmp"
    so.parent.mkdir(parents=True, exist_ok=True)
    so.write_bytes(content)
    meta = ArtifactMeta(key=key, sha256=hashlib.sha256(content).hexdigest(), size=size, target="x86-64",
                        triple="x86_64-pc-linux-gnu", cpu="x86-64", opt_level=0, pattern_ids=[name], created_at=used)
    tier.store.put(so, meta)
    so.unlink()
    assert tier.index is not None
    tier.index.note_build(name, "x86-64", meta)
    age(tier.store.root / "objects", used)
    return key


def put_object(tier: LocalTier, name: str, size: int, used: float) -> str:
    key = hashlib.sha256(name.encode()).hexdigest()
    path = tier.objects.put(key, name.encode().ljust(size, b"."))
    os.utime(path, (used, used))
    return key


def age(root: Path, when: float, only_newer: bool = True) -> None:
    """Set every file under root last used at `when` (those used after it, with only_newer)."""
    for path in root.rglob("*"):
        if path.is_file() and (not only_newer or path.stat().st_mtime > when):
            os.utime(path, (when, when))


def library_bytes(tier: LocalTier, key: str) -> int:
    return sum(p.stat().st_size for p in (tier.store.root / "objects" / key[:2]).glob(f"{key}.*"))


def object_bytes(tier: LocalTier, key: str) -> int:
    """The object and the sha256 kept beside it."""
    return sum(p.stat().st_size for p in (tier.objects.root / key[:2]).glob(f"{key}.*"))


def test_the_least_recently_used_go_first_until_the_cache_fits(tmp_path: Path) -> None:
    tier = local_tier(tmp_path / "cache")
    now = time.time()
    oldest_object = put_object(tier, "runtime.o", 4000, now - 5000)
    old = put_artifact(tier, "old", 3000, now - 4000)
    middle = put_artifact(tier, "middle", 3000, now - 3000)
    recent_object = put_object(tier, "rules.o", 4000, now - 2000)
    new = put_artifact(tier, "new", 3000, now - 1000)
    total = tier.size()
    limit = total - object_bytes(tier, oldest_object) - library_bytes(tier, old) - 1  # the oldest two: not enough
    report = gc_local(tier, Policy(max_size=limit))
    assert (report.artifacts_evicted, report.objects_evicted) == (2, 1)
    assert report.bytes_before == total and report.bytes_after == tier.size() <= limit
    assert not tier.store.exists(old) and not tier.store.exists(middle) and tier.store.exists(new)
    assert tier.objects.get(oldest_object) is None and tier.objects.get(recent_object) is not None
    assert tier.index is not None
    assert [entry.key for entry in tier.index.artifacts()] == [new]  # the index entries went with the files
    assert tier.index.lookup("old", "x86-64") is None and tier.index.lookup("new", "x86-64") == new


def test_older_than_evicts_what_was_not_used_since(tmp_path: Path) -> None:
    tier = local_tier(tmp_path / "cache")
    now = time.time()
    stale = put_artifact(tier, "stale", 100, now - 8 * 86400)
    fresh = put_artifact(tier, "fresh", 100, now - 86400)
    report = gc_local(tier, Policy(older_than=duration("7d")))
    assert report.artifacts_evicted == 1 and not tier.store.exists(stale) and tier.store.exists(fresh)


def test_what_was_used_within_the_grace_stays_whatever_the_limit(tmp_path: Path) -> None:
    tier = local_tier(tmp_path / "cache")
    now = time.time()
    old = put_artifact(tier, "old", 100, now - 3600)
    in_use = put_artifact(tier, "in use", 100, now - 5)
    report = gc_local(tier, Policy(max_size=0, keep_recent=60))
    assert (report.artifacts_evicted, report.kept_in_use) == (1, 1)
    assert not tier.store.exists(old) and tier.store.exists(in_use)
    assert gc_local(tier, CLEAR).artifacts_evicted == 1 and tier.size() == 0  # clear: everything, now


def test_a_fetch_or_a_reused_object_counts_as_a_use(tmp_path: Path) -> None:
    tier = local_tier(tmp_path / "cache")
    now = time.time()
    fetched = put_artifact(tier, "fetched", 100, now - 7200)
    other = put_artifact(tier, "other", 100, now - 3600)
    reused = put_object(tier, "reused.o", 100, now - 7200)
    assert tier.store.fetch(fetched) is not None and tier.objects.get(reused) is not None  # used now
    gc_local(tier, Policy(older_than=600))
    assert tier.store.exists(fetched) and tier.objects.get(reused) is not None and not tier.store.exists(other)


def test_index_entries_whose_files_are_gone_are_removed(tmp_path: Path) -> None:
    tier = local_tier(tmp_path / "cache")
    key = put_artifact(tier, "removed by hand", 100, time.time())
    for path in (tier.store.root / "objects").rglob(f"{key}.*"):
        path.unlink()
    assert gc_local(tier, Policy()).entries_repaired == 1
    assert tier.index is not None and tier.index.meta(key) is None


def test_bad_limits_name_what_was_expected() -> None:
    with pytest.raises(InvalidSetting, match=r"FARM_CACHE_SIZE='2 gigs'.*expected a size in bytes"):
        FarmConfig.from_env({"FARM_CACHE_SIZE": "2 gigs"})
    assert FarmConfig.from_env({"FARM_CACHE_SIZE": "2G"}).cache_size == 2 << 30
    with pytest.raises(ValueError, match="a duration"):
        duration("a week")
    assert duration("12h") == 12 * 3600
    with pytest.raises(InvalidArgument, match="max_size"):
        Policy(max_size=-1)


RULES = "rule r{n}: (f ?x) => (g ?x {n})"


def test_the_builder_keeps_the_cache_within_its_size(tmp_path: Path) -> None:
    """Real builds (-O0, in process): past FARM_CACHE_SIZE, each store evicts the least recently used, never what
    it just stored; an evicted artifact requested again is built again."""
    cache = tmp_path / "cache"
    engine = Engine(FarmConfig(cache_dir=cache, opt_level=0, compile_path="inprocess", cache_size=1))
    built = []
    for n in range(3):
        age(cache, time.time() - 3600)  # what earlier builds stored is an hour old: past the grace
        built.append(engine.compile(ruleset_of(RULES.format(n=n)), f"p{n}"))
    store, index = engine.builder.store, engine.builder.index
    assert [store.exists(a.meta.key) for a in built] == [False, False, True]
    assert [entry.key for entry in index.artifacts()] == [built[2].meta.key]
    again = engine.compile(ruleset_of(RULES.format(n=0)), "p0")
    assert not again.cached and again.meta.key == built[0].meta.key and again.path.exists()


def test_a_reader_rebuilds_what_is_evicted_under_it_and_never_fails(tmp_path: Path) -> None:
    """One thread clears the whole local tier, with no grace, every 50 ms while others compile, load and rewrite:
    objects vanish before their link, libraries before their load, files while they are verified. (The grace,
    IN_USE_GRACE, is what keeps this from happening in practice; here each reader's retries are what is tested.)"""
    cache = tmp_path / "cache"
    config = FarmConfig(cache_dir=cache, opt_level=0, compile_path="inprocess", cache_size=0)
    tier = local_tier(cache)
    stop = threading.Event()
    evictions: list[int] = []
    failures: list[BaseException] = []

    def evict() -> None:
        while not stop.is_set():
            report = gc_local(tier, CLEAR)
            evictions.append(report.artifacts_evicted + report.objects_evicted)
            time.sleep(0.05)

    def read(n: int) -> None:
        rules = ruleset_of(RULES.format(n=n))
        graph = TermGraph(rules.make_signature())
        roots = graph.parse(f"(f {n})")
        try:
            for _ in range(8):
                result = Engine(config).rewrite(rules, graph, roots, f"p{n}", engine="native")
                assert result.texts() == [f"(g {n} {n})"]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    evictor = threading.Thread(target=evict)
    readers = [threading.Thread(target=read, args=(n,)) for n in range(2)]
    evictor.start()
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(300)
    stop.set()
    evictor.join(60)
    assert failures == []
    assert sum(evictions) > 0  # it did evict under them


def test_a_coordinator_asks_again_for_what_was_evicted_before_it_answered(tmp_path: Path) -> None:
    farm = Farm(tmp_path)
    farm.start_worker("x86-64")
    evicted: list[int] = []
    deliver = farm.app.body

    def build_then_evict(task: Any, message: dict[str, Any]) -> dict[str, Any]:
        result = deliver(task, message)
        if not evicted:  # the first build is evicted before the coordinator reads its index entry
            evicted.append(gc_shared(farm.index, farm.node("operator"), CLEAR).artifacts_evicted)
        return result

    farm.app.body = build_then_evict
    outcome = farm.coordinator().request(request_for("evicted"), timeout=30)
    assert evicted == [1] and outcome.status == Status.CACHED or outcome.status == Status.COMPILED
    assert outcome.meta is not None and farm.index.meta(outcome.key) is not None
    assert farm.bucket.get(outcome.key) is not None


# ---- the shared tier on real servers ----

@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with redis_server(tmp_path_factory.mktemp("gc-redis")) as redis_url, s3_server() as s3:
        yield {"redis": redis_url, "s3": s3}


def test_shared_gc_evicts_index_entries_then_objects_and_workers_rebuild(servers: dict[str, str],
                                                                         tmp_path: Path) -> None:
    env = cluster_env(servers["redis"], servers["s3"], tmp_path / "worker", FARM_OPT_LEVEL="0",
                      FARM_COMPILE_PATH="inprocess", FARM_S3_BUCKET=f"gc-{uuid.uuid4().hex[:12]}")
    config = FarmConfig.from_env(env)
    index = RedisIndex(servers["redis"])
    index.r.flushdb()
    worker = ArtifactBuilder(config, index, make_store(config, index), count_requests=False)
    built = [worker.ensure_ruleset(ruleset_of(RULES.format(n=n)), f"p{n}", "x86-64") for n in range(3)]
    worker.ensure_ruleset(ruleset_of(RULES.format(n=0)), "p0", "x86-64")  # p0 hit: now the most recently used
    index.touch(built[0].meta.key)
    sizes = [a.meta.size for a in built]
    assert index.artifact_bytes() == sum(sizes)
    operator = make_store(FarmConfig.from_env({**env, "FARM_CACHE_DIR": str(tmp_path / "operator")}))
    report = gc_shared(index, operator, Policy(max_size=sizes[0] + sizes[2], keep_recent=0))
    assert (report.artifacts_evicted, report.bytes_before, report.bytes_after) == (1, sum(sizes), sizes[0] + sizes[2])
    evicted = built[1].meta.key
    assert index.meta(evicted) is None and index.lookup("p1", "x86-64") is None
    assert not operator.exists(evicted) and index.artifact_bytes() == sizes[0] + sizes[2]
    rebuilt = worker.ensure_ruleset(ruleset_of(RULES.format(n=1)), "p1", "x86-64")  # its local copy is no hit
    assert not rebuilt.cached and rebuilt.meta.key == evicted and operator.exists(evicted)
    assert index.artifact_bytes() == sum(sizes)
    command = subprocess.run([sys.executable, "-m", "farm.cli", "cache", "clear", "--shared", "--json"],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)
    cleared = json.loads(command.stdout)
    assert cleared["artifacts_evicted"] == 3 and cleared["bytes_after"] == 0
    assert index.artifacts() == [] and index.artifact_bytes() == 0 and index.artifact_count() == 0
    assert not any(operator.exists(a.meta.key) for a in built)


# ---- what the cache commands call ----

def test_show_says_what_a_pattern_points_at_and_why_a_request_would_miss(tmp_path: Path) -> None:
    config = FarmConfig(cache_dir=tmp_path / "cache", opt_level=0, compile_path="inprocess")
    built = Engine(config).compile(ruleset_of(RULES.format(n=7)), "shown", "x86-64")
    [shown] = describe(config, "shown")
    assert (shown.key, shown.patterns, shown.stored, shown.miss) == (built.meta.key, [("shown", "x86-64")], True, None)
    assert shown.entry is not None and shown.entry.size == built.meta.size and shown.meta == built.meta
    assert [s.key for s in describe(config, built.meta.key[:8])] == [built.meta.key]  # by key prefix
    assert json.loads(json.dumps(shown.to_json()))["patterns"] == [{"pattern_id": "shown", "target": "x86-64"}]
    LocalStore(config.cache_dir).delete(built.meta.key)  # the library gone, the entry left (by hand)
    assert "gone from the store" in (describe(config, "shown")[0].miss or "")
    assert describe(config, "never built") == []
    assert [entry.key for entry in listing(config)] == [built.meta.key]
    other = dataclasses.replace(built.meta, toolchain={**built.meta.toolchain, "ld": "ld.lld=99"})
    assert "another toolchain (ld ld.lld=99, here" in (why_miss(shown.entry, other, True, built.meta.toolchain) or "")


def test_gc_clear_and_zero_as_the_commands_run_them(tmp_path: Path) -> None:
    config = FarmConfig(cache_dir=tmp_path / "cache", opt_level=0, compile_path="inprocess")
    engine = Engine(config)
    for n in range(2):
        engine.compile(ruleset_of(RULES.format(n=n)), f"p{n}", "x86-64")
    age(config.cache_dir, time.time() - 2 * 86400)
    assert collect(config, shared=False).artifacts_evicted == 0  # within FARM_CACHE_SIZE (10G)
    report = collect(config, shared=False, older_than=duration("1d"))
    assert report.artifacts_evicted == 2 and report.objects_evicted >= 2 and report.bytes_after == 0
    engine.compile(ruleset_of(RULES.format(n=0)), "p0", "x86-64")
    assert engine.builder.index.counters()["misses"] == 3
    zero_stats(config)
    assert not engine.builder.index.counters().get("misses") and engine.builder.index.artifact_count() == 1
    assert clear(config, shared=False).artifacts_evicted == 1 and listing(config) == []
    with pytest.raises(ConfigError, match="--shared needs"):
        collect(config, shared=True)


def test_the_cache_commands_end_to_end(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for example in ("arith", "bool"):
        assert farm("compile", str(EXAMPLES / f"{example}.farm"), "-O", "0", cache=cache).returncode == 0
    listed = json.loads(farm("cache", "ls", "--json", cache=cache).stdout)
    assert len(listed) == 2 and {entry["target"] for entry in listed} == {"native"}
    shown = json.loads(farm("cache", "show", "bool", "--json", cache=cache).stdout)
    assert shown[0]["patterns"] == [{"pattern_id": "bool", "target": "native"}] and shown[0]["miss"] is None
    assert "a request" in farm("cache", "show", listed[0]["key"][:10], cache=cache).stdout
    bad = farm("cache", "gc", "--max-size", "2 gigs", cache=cache)
    assert bad.returncode == 2 and "--max-size: '2 gigs': expected a size in bytes" in bad.stderr
    kept = json.loads(farm("cache", "gc", "--max-size", "0", "--json", cache=cache).stdout)
    assert kept["artifacts_evicted"] == 0 and kept["kept_in_use"] >= 2  # all used in the last minute
    cleared = json.loads(farm("cache", "clear", "--json", cache=cache).stdout)
    assert cleared["artifacts_evicted"] == 2 and cleared["bytes_after"] == 0
    assert json.loads(farm("cache", "ls", "--json", cache=cache).stdout) == []
    assert farm("stats", "--zero", cache=cache).returncode == 0
    assert "misses" in farm("stats", cache=cache).stdout
