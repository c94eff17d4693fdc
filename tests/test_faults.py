"""Faults injected into real processes: SIGKILLed workers, a restarted redis-server, an S3 endpoint that
goes away mid-upload, a full disk, and a thundering herd. Each test runs its own servers and workers (the
faults would disturb the shared ones). The long ones carry the `slow` marker; scripts/test runs them all.

The invariants checked after every fault: every job completes (no result lost), every artifact is compiled
once in effect (content-keyed), and every index entry points at a stored object whose bytes match its
sha256 (no corrupt or partial artifact is ever indexed).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from farm.cache import keys
from farm.cache.builder import ArtifactBuilder
from farm.cache.engine import Engine
from farm.cache.index.redis import RedisIndex
from farm.cache.signing import write_key_pair
from farm.cluster.coordinator import CompileRequest, Coordinator, Outcome
from farm.config import FarmConfig
from farm.errors import WorkDirError
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet
from workers.app import make_coordinator

from .conftest import ruleset_of
from .servers import (
    celery_worker,
    cluster_env,
    free_port,
    process_children,
    process_name,
    redis_server,
    s3_server,
    tcp_proxy,
)

TOOLS = ("llvm-as", "opt", "llc", "llvm-mc", "ld.lld")
TARGET = "x86-64"
FIGURES: dict[str, Any] = {}  # printed at the end of the run (conftest's terminal summary)


def job_rulesets(n: int, tag: str) -> list[tuple[str, RuleSet]]:
    """n distinct small rulesets: real compiles of a few hundred ms each."""
    return [(f"{tag}-{k}", ruleset_of(f"rule {tag}_base: (plus 0 ?y) => ?y\n"
                                      f"rule {tag}_step: (plus (s ?x) ?y) => (s (plus ?x ?y))\n"
                                      f"rule {tag}_{k}: (u{k} ?x ?y) => (plus ?y ?x)")) for k in range(n)]


def requests_for(jobs: list[tuple[str, RuleSet]], opt_level: int = 1) -> list[CompileRequest]:
    return [CompileRequest.for_ruleset(pid, rs, TARGET, opt_level) for pid, rs in jobs]


@contextmanager
def farm_cluster(tmp: Path, workers: int = 2, redis_port: int | None = None, s3_endpoint: str | None = None,
                 **env_extra: str) -> Iterator[dict[str, Any]]:
    """redis-server, moto S3 (unless an endpoint is given) and `workers` Celery workers for TARGET. The
    workers sign with a fresh key pair's private key ("worker_env"); "env" (coordinators, nodes) holds only
    its public key."""
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(tmp / "redis", redis_port, durable=True))
        s3 = s3_endpoint or stack.enter_context(s3_server())
        pair = write_key_pair(tmp / "builders")
        env = cluster_env(redis_url, s3, tmp / "coordinator", FARM_MAX_DELIVERIES="10",
                          FARM_VERIFY_KEY=str(pair.public_path), **env_extra)
        worker_env = {**env, "FARM_SIGNING_KEY": str(pair.private_path)}
        procs = [stack.enter_context(celery_worker(TARGET, {**worker_env, "FARM_CACHE_DIR": str(tmp / f"w{n}")},
                                                   tmp / f"w{n}.log")) for n in range(workers)]
        wait_registered(redis_url, procs, tmp)
        yield {"redis": redis_url, "s3": s3, "env": env, "worker_env": worker_env, "workers": procs,
               "stack": stack}


def wait_registered(redis_url: str, procs: list[subprocess.Popen], tmp: Path) -> None:  # type: ignore[type-arg]
    index = RedisIndex(redis_url)
    deadline = time.monotonic() + 90
    while not index.toolchain(TARGET):
        assert all(p.poll() is None for p in procs), (tmp / "w0.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "workers did not register"
        time.sleep(0.2)


def coordinator(env: dict[str, str], **extra: str) -> Coordinator:
    return make_coordinator(FarmConfig.from_env({**env, **extra}))


def s3_client(endpoint: str) -> Minio:
    return Minio(endpoint, access_key="testing", secret_key="testing-secret", secure=False)


def assert_index_consistent(redis_url: str, s3_endpoint: str) -> int:
    """Every indexed artifact is stored, whole, with the sha256 its metadata records; returns their count."""
    index = RedisIndex(redis_url)
    client = s3_client(s3_endpoint)
    artifact_keys = [k.decode() for k in index.r.smembers(keys.ARTIFACTS)]
    for key in artifact_keys:
        meta = index.meta(key)
        assert meta is not None, f"{key} is in the artifact set without metadata"
        response = client.get_object("farm-test", f"artifacts/{key}.so")
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        assert hashlib.sha256(data).hexdigest() == meta.sha256 and len(data) == meta.size, f"corrupt {key}"
        client.stat_object("farm-test", f"artifacts/{key}.json")  # the commit marker is there too
    for target_hash in index.r.scan_iter(keys.index("*")):
        for key in index.r.hvals(target_hash):
            assert key.decode() in artifact_keys
    return len(artifact_keys)


def assert_all_done(outcomes: list[Outcome], jobs: int) -> set[str]:
    failed = [(o.request.pattern_id, o.status, o.error) for o in outcomes if o.status not in ("compiled", "cached")]
    assert not failed, failed[:5]
    assert all(o.meta is not None and o.meta.key == o.key for o in outcomes)
    distinct = {o.key for o in outcomes}
    assert len(distinct) == jobs
    return distinct


def in_background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported by the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def result_of(thread: threading.Thread, box: dict[str, Any], timeout: float) -> Any:
    thread.join(timeout)
    assert not thread.is_alive(), "the pre-warm did not finish"
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---- SIGKILL ----

def compiling_pool_processes(worker: subprocess.Popen) -> list[int]:  # type: ignore[type-arg]
    """The worker's pool processes that are running a toolchain stage right now."""
    return [child for child in process_children(worker.pid)
            if any(process_name(grandchild).startswith(TOOLS) for grandchild in process_children(child))]


@pytest.mark.slow
def test_sigkilled_workers_lose_no_job_and_index_nothing_partial(tmp_path: Path) -> None:
    jobs = job_rulesets(200, "kill")
    with farm_cluster(tmp_path, workers=2, FARM_VISIBILITY_TIMEOUT="8") as farm:
        coord = coordinator(farm["env"])
        thread, box = in_background(lambda: coord.ensure(requests_for(jobs), timeout=900))
        rng = random.Random(6)
        pool_kills = node_kills = 0
        workers: list[subprocess.Popen] = farm["workers"]  # type: ignore[type-arg]
        while thread.is_alive() and pool_kills < 24:
            time.sleep(rng.uniform(0.3, 0.9))
            victims = [pid for w in workers for pid in compiling_pool_processes(w)]
            if victims:
                os.kill(rng.choice(victims), signal.SIGKILL)  # mid-compile: a tool of it is running
                pool_kills += 1
            if pool_kills in (8, 16) and node_kills < pool_kills // 8:
                # A whole worker dies (main process and pool): its messages come back after the
                # visibility timeout; a replacement starts.
                n = node_kills
                os.killpg(workers[n].pid, signal.SIGKILL)
                workers[n].wait()
                workers[n] = farm["stack"].enter_context(celery_worker(
                    TARGET, {**farm["worker_env"], "FARM_CACHE_DIR": str(tmp_path / f"w{n}b")},
                    tmp_path / f"w{n}b.log"))
                node_kills += 1
        outcomes = result_of(thread, box, 900)
        distinct = assert_all_done(outcomes, 200)
        stored = assert_index_consistent(farm["redis"], farm["s3"])
        counters = coord.index.counters()
        delivered = [int(v) for v in (coord.index.r.get(k) for k in coord.index.r.scan_iter(keys.deliveries("*")))]
        dead = coord.index.dead_letters()
    assert pool_kills >= 20 and node_kills == 2
    assert stored == len(distinct) == 200
    # Once in effect: a job killed after storing its object finds it on redelivery and compiles nothing (the
    # compilation that stored it is counted then, test_a_build_killed_before_it_was_indexed_is_counted_once).
    assert 200 <= counters["compilations_ok"] <= 200 + pool_kills + node_kills * 2
    assert counters.get("redeliveries", 0) == sum(d - 1 for d in delivered) >= 1
    assert counters.get("dead_letters", 0) == 0 and dead == []
    FIGURES["sigkill"] = {"jobs": 200, "pool processes killed": pool_kills, "whole workers killed": node_kills,
                          "jobs lost": 0, "corrupt artifacts indexed": 0,
                          "redeliveries": int(counters.get("redeliveries", 0)),
                          "compilations": int(counters["compilations_ok"])}


def stored_but_unindexed(config: FarmConfig, ruleset: RuleSet) -> None:
    """The ruleset's library stored by a builder killed before it indexed it."""
    killed = ArtifactBuilder(config)

    def died_here(*args: object) -> None:
        raise SystemExit("SIGKILL between store.put and index.note_build")

    killed.index.note_build = died_here  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        killed.ensure_ruleset(ruleset, "p", "x86-64")


@pytest.mark.parametrize("count_requests", [False, True], ids=["worker", "engine"])
def test_a_build_killed_before_it_was_indexed_is_counted_once(tmp_path: Path, count_requests: bool) -> None:
    """A builder killed between storing its library and indexing it: whoever finds the library next indexes it
    and counts that compilation, once (the 200-job SIGKILL test saw 199 compilations for 200 libraries)."""
    config = FarmConfig(cache_dir=tmp_path / "cache", opt_level=0, tiered=False)
    ruleset = ruleset_of("rule r: (f ?x) => (g ?x)\n")
    stored_but_unindexed(config, ruleset)
    found = ArtifactBuilder(config, count_requests=count_requests)
    assert found.index.counters().get("compilations_ok", 0) == 0
    for _ in range(2):
        artifact = found.ensure_ruleset(ruleset, "p", "x86-64")
        assert artifact.cached and found.index.lookup("p", "x86-64") == artifact.meta.key
        counters = found.index.counters()
        assert counters["compilations_ok"] == 1 and counters.get("compilations_failed", 0) == 0
    assert counters.get("hits", 0) == (2 if count_requests else 0)


# ---- Redis restart ----

@pytest.mark.slow
def test_redis_restart_during_prewarm_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    jobs = job_rulesets(60, "redis")
    with farm_cluster(tmp_path, workers=2, redis_port=port) as farm:
        env = farm["env"]
        # A node that loaded a ruleset before the outage (the in-process cache); it builds it itself, so it
        # holds the builders' key.
        node = Engine(FarmConfig.from_env({**farm["worker_env"], "FARM_CACHE_DIR": str(tmp_path / "node"),
                                           "FARM_OPT_LEVEL": "0"}))
        served_rs = ruleset_of("rule a: (plus 0 ?y) => ?y\nrule b: (plus (s ?x) ?y) => (s (plus ?x ?y))")

        def rewrite_on_node() -> str:
            g = TermGraph(served_rs.make_signature())
            return node.rewrite(served_rs, g, g.parse("(plus (s (s 0)) (s 0))"), "served", engine="native",
                                target=TARGET).texts()[0]

        assert rewrite_on_node() == "(s (s (s 0)))"
        coord = coordinator(env)
        thread, box = in_background(lambda: coord.ensure(requests_for(jobs), timeout=600))
        index = RedisIndex(farm["redis"])
        while index.counters().get("compilations_ok", 0) < 10:
            time.sleep(0.1)
        # Stop redis-server mid pre-warm (SIGKILL: no goodbye), keep it down, start it again on its port.
        down_at = time.monotonic()
        kill_redis(port)
        served_while_down = [rewrite_on_node() for _ in range(20)]  # no Redis, no S3 round trip needed
        time.sleep(4)
        with redis_server(tmp_path / "redis", port, durable=True):
            outage = time.monotonic() - down_at
            outcomes = result_of(thread, box, 600)
            distinct = assert_all_done(outcomes, 60)
            stored = assert_index_consistent(farm["redis"], farm["s3"])
            again = coordinator(env).ensure(requests_for(jobs), timeout=120)  # nothing is compiled twice
            assert all(o.status == "cached" for o in again)
    assert served_while_down == ["(s (s (s 0)))"] * 20
    assert stored >= len(distinct) == 60
    FIGURES["redis restart"] = {"jobs": 60, "outage s": round(outage, 1), "jobs lost": 0,
                                "rewrites served during the outage": 20}


@pytest.mark.slow
def test_redis_outage_as_a_task_finishes_loses_nothing(tmp_path: Path) -> None:
    """The moment the Redis restart above meets only now and then: a task has done farm's part (built, indexed,
    lock released) and Celery writes its result while Redis is away. Here Celery's Redis (broker and results)
    is a server apart from the index's (FARM_BROKER_URL, FARM_RESULT_URL): it is stopped while the task compiles
    and started again once the task has finished, so that moment comes every time."""
    celery_port = free_port()
    with ExitStack() as stack:
        celery_redis = stack.enter_context(redis_server(tmp_path / "celery", celery_port, durable=True))
        farm = stack.enter_context(farm_cluster(tmp_path, workers=1, FARM_BROKER_URL=celery_redis,
                                                FARM_RESULT_URL=celery_redis))
        index = RedisIndex(farm["redis"])
        coord = coordinator(farm["env"])
        thread, box = in_background(lambda: coord.ensure(requests_for(job_rulesets(1, "finish")), timeout=90))
        worker: subprocess.Popen = farm["workers"][0]  # type: ignore[type-arg]
        deadline = time.monotonic() + 60
        while not (pool := compiling_pool_processes(worker)):
            assert time.monotonic() < deadline and thread.is_alive(), "the task never started compiling"
            time.sleep(0.005)
        # The task is held still (its tool runs on) while Celery's Redis goes, so it cannot finish first.
        os.kill(pool[0], signal.SIGSTOP)
        try:
            kill_redis(celery_port)
        finally:
            os.kill(pool[0], signal.SIGCONT)
        while index.counters().get("compilations_ok", 0) < 1:  # built and indexed: its result is due now
            assert time.monotonic() < deadline, "the task did not finish compiling"
            time.sleep(0.05)
        time.sleep(2)  # the task finishes and meets the outage
        with redis_server(tmp_path / "celery", celery_port, durable=True):
            outcomes = result_of(thread, box, 120)
    assert_all_done(outcomes, 1)  # before the fix: FAILED, "ConnectionError: Error 111 connecting to ..."


def kill_redis(port: int) -> None:
    """SIGKILL the redis-server listening on `port` (found through /proc, as an operator would with ss), then
    wait until the port refuses connections."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or process_name(int(proc.name)) != "redis-server":
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg == str(port).encode() or arg.endswith(f":{port}".encode()) for arg in argv):  # proctitle
            os.kill(int(proc.name), signal.SIGKILL)
            break
    else:
        raise AssertionError(f"no redis-server on port {port}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"redis-server on port {port} survived SIGKILL")


# ---- S3 outage ----

@pytest.mark.slow
def test_s3_outage_during_uploads_is_retried_and_never_indexes_a_missing_object(tmp_path: Path) -> None:
    jobs = job_rulesets(40, "s3")
    with s3_server() as backend:
        proxy_port = free_port()
        backend_port = int(backend.rsplit(":", 1)[1])
        endpoint = f"127.0.0.1:{proxy_port}"
        with ExitStack() as proxies:
            proxies.enter_context(tcp_proxy(backend_port, proxy_port))
            with farm_cluster(tmp_path, workers=2, s3_endpoint=endpoint) as farm:
                coord = coordinator(farm["env"])
                thread, box = in_background(lambda: coord.ensure(requests_for(jobs), timeout=600))
                index = RedisIndex(farm["redis"])
                while index.counters().get("compilations_ok", 0) < 5:
                    time.sleep(0.1)
                proxies.close()  # the S3 endpoint goes away, mid-upload for some jobs
                down_at = time.monotonic()
                time.sleep(1)
                during = index.counters().get("compilations_ok", 0)
                time.sleep(6)
                # Nothing was indexed while S3 was away, though workers kept compiling and retrying.
                assert index.counters().get("compilations_ok", 0) == during
                assert_index_consistent(farm["redis"], backend)  # checked against the server behind the endpoint
                with tcp_proxy(backend_port, proxy_port):
                    outage = time.monotonic() - down_at
                    outcomes = result_of(thread, box, 600)
                    distinct = assert_all_done(outcomes, 40)
                    stored = assert_index_consistent(farm["redis"], endpoint)
                logs = "".join((tmp_path / f"w{n}.log").read_text() for n in range(2))
    assert stored == len(distinct) == 40
    assert "is unreachable" in logs and "retrying in" in logs  # the failure is reported, with the retry
    FIGURES["s3 outage"] = {"jobs": 40, "outage s": round(outage, 1), "jobs lost": 0,
                            "index entries without an object": 0, "retry reports in worker logs":
                                logs.count("retrying in")}


# ---- thundering herd ----

@pytest.mark.slow
def test_1000_concurrent_requests_for_50_patterns_compile_exactly_50(tmp_path: Path) -> None:
    jobs = job_rulesets(50, "herd")
    with farm_cluster(tmp_path, workers=2) as farm:
        coords = [coordinator(farm["env"]) for _ in range(8)]
        before = coords[0].index.counters().get("compilations_ok", 0)
        requests = requests_for(jobs)
        outcomes: list[Outcome] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        rng = random.Random(3)
        order = [rng.randrange(50) for _ in range(1000)]

        def client(n: int) -> None:
            try:
                mine = [coords[n % 8].request(requests[k], timeout=300) for k in order[n::50]]
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                return
            with lock:
                outcomes.extend(mine)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(400)
        compiled = coords[0].index.counters().get("compilations_ok", 0) - before
        stored = assert_index_consistent(farm["redis"], farm["s3"])
    assert not errors and len(outcomes) == 1000 and all(o.status in ("compiled", "cached") for o in outcomes)
    assert len({o.key for o in outcomes}) == 50 and compiled == 50 and stored == 50
    FIGURES["herd"] = {"requests": 1000, "distinct patterns": 50, "compilations": int(compiled)}


# ---- full disk ----

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KB filesystem (tmpfs), so writes fail with ENOSPC as on a full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)  # files may still be open


def fill(disk: Path, leave_kb: int) -> None:
    stat = os.statvfs(disk)
    (disk / "fill").write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_kb * 1024))


@pytest.mark.parametrize("leave_kb", [150, 60, 8])
def test_full_work_disk_is_a_clear_error_and_leaves_nothing(small_disk: Path, tmp_path: Path, leave_kb: int) -> None:
    fill(small_disk, leave_kb)
    engine = Engine(FarmConfig(cache_dir=tmp_path / "cache", work_dir=small_disk / "work", opt_level=0))
    rs = ruleset_of("rule a: (plus 0 ?y) => ?y\nrule b: (plus (s ?x) ?y) => (s (plus ?x ?y))")
    with pytest.raises(WorkDirError, match="No space left on device") as info:
        engine.compile(rs, "p", TARGET)
    assert str(small_disk / "work") in str(info.value)  # names the directory, not a tool's internals
    assert not list((small_disk / "work").rglob("*")) and not list((tmp_path / "cache").rglob("*.so"))
    assert engine.builder.index.lookup("p", TARGET) is None
    (small_disk / "fill").unlink()  # space again: the same engine builds it
    assert not engine.compile(rs, "p", TARGET).cached


def test_full_cache_disk_is_a_clear_error(small_disk: Path, tmp_path: Path) -> None:
    cache = small_disk / "cache"
    engine = Engine(FarmConfig(cache_dir=cache, work_dir=tmp_path / "work", opt_level=0))
    fill(small_disk, 4)
    rs = ruleset_of("rule a: (plus 0 ?y) => ?y")
    with pytest.raises(WorkDirError) as info:
        engine.compile(rs, "p", TARGET)
    assert str(cache) in str(info.value) and re.search("disk is full|No space left on device", str(info.value))
    assert not list(cache.rglob("*.so")) and not list(cache.rglob("*.tmp*"))
