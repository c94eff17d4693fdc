"""The farm on real components: redis-server, an S3-protocol server (moto) and two Celery worker processes
serving different targets, all on loopback. No mocks."""

from __future__ import annotations

import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from minio import Minio

from farm.cache import keys
from farm.cache.index.redis import RedisIndex
from farm.cache.pull import pull
from farm.cache.signing import key_id, load_public_key, write_key_pair
from farm.cluster.coordinator import CompileRequest, Coordinator
from farm.cluster.messages import CompileMessage, WirePart
from farm.compiler.tools import artifact_key
from farm.config import FarmConfig
from farm.errors import IntegrityError, NoWorkerForTarget, UntrustedSigner
from farm.lang.dsl import parse_rules
from farm.lang.serialize import ruleset_from_json
from farm.lang.terms import TermGraph
from farm.lang.transduce import transduce_patterns
from farm.runtime.verify import TermGenerator
from farm.semantics.interp import Interpreter
from farm.targets import resolve
from workers.app import make_coordinator

from .conftest import CLUSTER_TARGETS as TARGETS
from .conftest import EXAMPLES
from .servers import ROOT, celery_worker, cluster_env, redis_server, s3_server


def coordinator(cluster: dict[str, str], cache: str, **extra: str) -> Coordinator:
    env = cluster_env(cluster["redis"], cluster["s3"], Path(cluster["tmp"]) / cache,
                      FARM_VERIFY_KEY=cluster["verify_key"], **extra)
    return make_coordinator(FarmConfig.from_env(env))


def patterns_from(text: str) -> list[tuple[str, object]]:
    parsed = parse_rules(text)
    return [(p.name, transduce_patterns([p], parsed.declared_ops, warn=False)) for p in parsed.patterns]


def generated(n: int, seed: int) -> list[tuple[str, object]]:
    import sys

    sys.path.insert(0, str(EXAMPLES))
    import gen_rules

    text, _ = gen_rules.generate(n, seed)
    return patterns_from(text.replace("rule r", f"rule s{seed}_r"))


def test_prewarm_200_patterns_on_two_targets_then_all_hits_and_a_node_pulls(cluster: dict[str, str]) -> None:
    coord = coordinator(cluster, "coord")
    patterns = generated(200, seed=1)
    requests = [CompileRequest.for_ruleset(pid, rs, t, 0) for pid, rs in patterns for t in TARGETS]  # type: ignore[arg-type]
    before = coord.index.counters().get("compilations_ok", 0)
    start = time.perf_counter()
    first = coord.ensure(requests, timeout=900)
    elapsed = time.perf_counter() - start
    assert [o.status for o in first].count("compiled") == 400, {o.status + o.error for o in first}
    assert coord.index.counters()["compilations_ok"] - before == 400
    per_target = coord.index.counters()
    assert per_target["compilations_ok:x86-64"] >= 200 and per_target["compilations_ok:aarch64"] >= 200

    # Every artifact is in S3 with a matching sha256, and the index points each (pattern, target) at it.
    s3 = Minio(cluster["s3"], "testing", "testing-secret", secure=False)
    for outcome in first:
        meta = outcome.meta
        assert meta is not None and meta.signature
        body = s3.get_object("farm-test", f"artifacts/{meta.key}.so").read()
        import hashlib

        assert hashlib.sha256(body).hexdigest() == meta.sha256
        assert coord.index.lookup(outcome.request.pattern_id, outcome.request.target) == meta.key

    second = coord.ensure(requests, timeout=120)
    assert all(o.status == "cached" for o in second)
    assert coord.index.counters()["compilations_ok"] - before == 400  # zero new compilations

    # A node with an empty cache pulls one pattern's best artifact for its CPU and rewrites with it.
    node_env = cluster_env(cluster["redis"], cluster["s3"], Path(cluster["tmp"]) / "node",
                           FARM_VERIFY_KEY=cluster["verify_key"])
    pid, ruleset = patterns[7]
    pulled = pull(pid, FarmConfig.from_env(node_env))
    assert pulled.meta.target == "x86-64" and pulled.native is not None and pulled.signature_checked
    gen = TermGenerator(ruleset, random.Random(2))  # type: ignore[arg-type]
    g1, g2 = TermGraph(pulled.native.ruleset.make_signature()), TermGraph(pulled.native.ruleset.make_signature())
    texts = [g1.to_text(gen.term(g1)) for _ in range(300)]
    native = pulled.native.rewrite(g2, [g2.parse(t)[0] for t in texts])
    interp = Interpreter(ruleset_from_json(pulled.meta.ruleset)).rewrite(g1, [g1.parse(t)[0] for t in texts])
    assert native.texts() == interp.texts() and native.firings == interp.firings and sum(native.firings) > 0
    print(f"\npre-warm of 400 artifacts on 2 workers: {elapsed:.1f} s")


def test_concurrent_requests_compile_each_key_exactly_once(cluster: dict[str, str]) -> None:
    patterns = generated(10, seed=2)
    coords = [coordinator(cluster, f"c{i}") for i in range(4)]
    requests = [CompileRequest.for_ruleset(pid, rs, "x86-64", 0) for pid, rs in patterns]  # type: ignore[arg-type]
    before = coords[0].index.counters().get("compilations_ok", 0)
    results: list[str] = []
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            results.append(coords[i % 4].request(requests[i % 10], timeout=300).status)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 100
    assert set(results) <= {"compiled", "cached"}
    assert coords[0].index.counters()["compilations_ok"] - before == 10


def test_tampered_object_in_s3_is_refused_before_loading(cluster: dict[str, str]) -> None:
    coord = coordinator(cluster, "coord-t")
    (pid, rs), = patterns_from("rule tamper_me: (f (g ?x) 3) => (h ?x)")
    meta = coord.artifact(CompileRequest.for_ruleset(pid, rs, "x86-64", 0))  # type: ignore[arg-type]
    s3 = Minio(cluster["s3"], "testing", "testing-secret", secure=False)
    name = f"artifacts/{meta.key}.so"
    body = bytearray(s3.get_object("farm-test", name).read())
    body[len(body) // 2] ^= 0x55
    s3.put_object("farm-test", name, io.BytesIO(bytes(body)), len(body))
    node_env = cluster_env(cluster["redis"], cluster["s3"], Path(cluster["tmp"]) / "node-t",
                           FARM_VERIFY_KEY=cluster["verify_key"])
    with pytest.raises(IntegrityError, match="tampered with or truncated"):
        pull(pid, FarmConfig.from_env(node_env), "x86-64")
    assert not list((Path(cluster["tmp"]) / "node-t").rglob("*.so"))  # nothing kept, nothing loaded


def test_a_node_trusting_another_key_refuses_the_workers_artifacts(cluster: dict[str, str],
                                                                   tmp_path: Path) -> None:
    coord = coordinator(cluster, "coord-s")
    (pid, rs), = patterns_from("rule sign_me: (f ?x (g 4)) => (h ?x)")
    meta = coord.artifact(CompileRequest.for_ruleset(pid, rs, "x86-64", 0))  # type: ignore[arg-type]
    workers_key = key_id(load_public_key(Path(cluster["verify_key"])))
    assert meta.signature.startswith(f"ed25519:{workers_key}:")
    other = write_key_pair(tmp_path / "other")
    node_env = cluster_env(cluster["redis"], cluster["s3"], Path(cluster["tmp"]) / "node-s",
                           FARM_VERIFY_KEY=str(other.public_path))
    with pytest.raises(UntrustedSigner, match=f"signed by key '{workers_key}', which this node does not trust"):
        pull(pid, FarmConfig.from_env(node_env), "x86-64")


def test_swapped_objects_in_s3_are_refused_with_the_reason(cluster: dict[str, str]) -> None:
    """Another artifact's library and metadata, both intact, copied under this key: every sha256 matches,
    only the key inside the metadata tells, and it is checked before anything is kept or loaded."""
    coord = coordinator(cluster, "coord-w")
    (pa, ra), (pb, rb) = patterns_from("rule swap_a: (f (g ?x) 7) => ?x\nrule swap_b: (f (h ?x) 8) => ?x")
    a = coord.artifact(CompileRequest.for_ruleset(pa, ra, "x86-64", 0))  # type: ignore[arg-type]
    b = coord.artifact(CompileRequest.for_ruleset(pb, rb, "x86-64", 0))  # type: ignore[arg-type]
    s3 = Minio(cluster["s3"], "testing", "testing-secret", secure=False)
    for suffix in (".so", ".json"):
        body = s3.get_object("farm-test", f"artifacts/{b.key}{suffix}").read()
        s3.put_object("farm-test", f"artifacts/{a.key}{suffix}", io.BytesIO(body), len(body))
    node = Path(cluster["tmp"]) / "node-w"
    with pytest.raises(IntegrityError, match="describes artifact .*: swapped"):
        pull(pa, FarmConfig.from_env(cluster_env(cluster["redis"], cluster["s3"], node)), "x86-64")
    assert not list(node.rglob("*.so"))


HOSTILE_IDS = ["../../etc/passwd", "a\nb\r\nc", "quote\"'`", "ünïcødé ☃", "$(id); rm -rf /", "x" * 4000,
               "farm:idx:x86-64", "*", "\\..\\..", "%00%2e%2e"]


def test_hostile_pattern_ids_are_only_data_in_redis_celery_and_s3(cluster: dict[str, str]) -> None:
    coord = coordinator(cluster, "coord-h")
    (_, rs), = patterns_from("rule hostile: (hh ?x (hh ?x ?x)) => ?x")
    outcomes = coord.ensure([CompileRequest.for_ruleset(pid, rs, "x86-64", 0)  # type: ignore[arg-type]
                             for pid in HOSTILE_IDS], timeout=300)
    assert all(o.status in ("compiled", "cached") for o in outcomes) and len({o.key for o in outcomes}) == 1
    assert all(coord.index.lookup(pid, "x86-64") == outcomes[0].key for pid in HOSTILE_IDS)
    s3 = Minio(cluster["s3"], "testing", "testing-secret", secure=False)
    names = [o.object_name for o in s3.list_objects("farm-test", prefix="", recursive=True)]
    assert names and all(re.fullmatch(r"artifacts/[0-9a-f]{64}\.(so|json)", str(n)) for n in names)


def test_hit_whose_object_is_gone_is_a_miss_and_repaired(cluster: dict[str, str]) -> None:
    coord = coordinator(cluster, "coord-r")
    (pid, rs), = patterns_from("rule repair_me: (f ?x (h 5 ?x)) => ?x")
    request = CompileRequest.for_ruleset(pid, rs, "aarch64", 0)  # type: ignore[arg-type]
    meta = coord.artifact(request)
    s3 = Minio(cluster["s3"], "testing", "testing-secret", secure=False)
    s3.remove_object("farm-test", f"artifacts/{meta.key}.so")
    repaired = coord.request(request, timeout=120)
    assert repaired.status == "compiled" and repaired.meta is not None and repaired.meta.sha256 == meta.sha256
    s3.stat_object("farm-test", f"artifacts/{meta.key}.so")


def test_a_node_holding_the_artifact_hits_in_one_round_trip_without_s3(cluster: dict[str, str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    coord = coordinator(cluster, "coord-held")
    coord.TOOLCHAIN_TTL = 3600.0  # the toolchain read once, so the hit below is the only command
    (pid, rs), = patterns_from("rule held_here: (f ?x (h 6 ?x)) => ?x")
    request = CompileRequest.for_ruleset(pid, rs, "x86-64", 0)  # type: ignore[arg-type]
    meta = coord.artifact(request)
    assert coord.store.fetch(meta.key) is not None  # pulled: downloaded and verified into this node's cache
    s3 = Minio(cluster["s3"], "testing", "testing-secret", secure=False)
    s3.remove_object("farm-test", f"artifacts/{meta.key}.so")  # S3 lost it; this node still serves its copy

    def no_s3(*args: object, **kwargs: object) -> None:
        raise AssertionError("a node holding the artifact asked S3")

    monkeypatch.setattr(coord.store.client, "stat_object", no_s3)
    hits = coord.index.counters().get("hits", 0)
    commands: list[str] = []
    execute = coord.index.r.execute_command
    monkeypatch.setattr(coord.index.r, "execute_command", lambda *a, **k: commands.append(a[0]) or execute(*a, **k))
    hit = coord.request(request, timeout=60)
    monkeypatch.undo()
    assert hit.status == "cached" and hit.meta == meta and commands == ["EVALSHA"]
    assert coord.index.counters()["hits"] == hits + 1
    repaired = coordinator(cluster, "coord-unheld").request(request, timeout=120)  # no copy there: HEAD, gone
    assert repaired.status == "compiled" and repaired.meta is not None and repaired.meta.sha256 == meta.sha256
    s3.stat_object("farm-test", f"artifacts/{meta.key}.so")


@pytest.mark.parametrize("fate", ["missing", "orphaned"])
def test_a_message_the_broker_lost_is_sent_again(cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                 fate: str) -> None:
    """A Redis killed between a worker's BRPOP and its bookkeeping loses the message ("missing"); one a worker
    took just before its connection dropped stays unacknowledged, never started ("orphaned"). Either way our
    lock is still taken. Here the first publish of a pair is dropped (and, for "orphaned", left in the
    broker's unacknowledged set as a vanished worker would): the coordinator sends it again instead of
    waiting out its timeout."""
    coord = coordinator(cluster, f"coord-{fate}")
    coord.WAIT_SLICE, coord.ORPHANED_AFTER = 0.5, 1.0
    (a, rs_a), (b, rs_b) = patterns_from(f"rule {fate}_one: ({fate} ?x 1) => ?x\nrule {fate}_two: ({fate} ?x 2) => ?x")
    requests = [CompileRequest.for_ruleset(a, rs_a, "x86-64", 0),  # type: ignore[arg-type]
                CompileRequest.for_ruleset(b, rs_b, "x86-64", 0)]  # type: ignore[arg-type]
    publish, dropped = coord._publish, []
    with coord.app.connection_for_write() as connection:
        channel = connection.default_channel
        broker, unacked = channel.client, channel.unacked_key

    def lossy(messages: list) -> None:
        if not dropped:
            dropped.append(messages[0].id)
            if fate == "orphaned":
                broker.hset(unacked, f"orphan-{fate}", json.dumps([{"headers": {"id": messages[0].id}}]))
            messages = messages[1:]
        publish(messages)

    monkeypatch.setattr(coord, "_publish", lossy)
    before = coord.index.counters().get("republished", 0)
    started = time.monotonic()
    try:
        outcomes = coord.ensure(requests, timeout=120)
    finally:
        broker.hdel(unacked, f"orphan-{fate}")
    assert [o.status for o in outcomes] == ["compiled", "compiled"] and dropped
    assert coord.index.counters().get("republished", 0) == before + 1
    assert time.monotonic() - started < 60  # found within a few slices, not at the timeout


def test_a_workers_metrics_include_the_tasks_its_pool_ran(cluster: dict[str, str]) -> None:
    """Tasks run in Celery's forked pool processes: the worker's --metrics-port serves their samples (the
    multiprocess mode), not only the main process's, which never runs a task."""
    def tasks_counted() -> float:
        text = urllib.request.urlopen(cluster["worker_metrics"], timeout=10).read().decode()
        assert "process_resident_memory_bytes" in text  # the main process's own, beside the pool's
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('farm_worker_tasks_total{') and 'target="x86-64"' in line)

    before = tasks_counted()
    coord = coordinator(cluster, "coord-metrics")
    (pid, rs), = patterns_from("rule counted_by_the_pool: (metered ?x) => ?x")
    assert coord.request(CompileRequest.for_ruleset(pid, rs, "x86-64", 0)).status == "compiled"  # type: ignore[arg-type]
    assert tasks_counted() == before + 1


def test_a_plain_celery_worker_announces_itself_and_its_target_goes_when_it_stops(tmp_path: Path) -> None:
    """Started the plain Celery way, with no farm option: it serves the targets of the queues it consumes, says
    so on its heartbeat, and unregisters when it stops; a request for its target then fails at once (exit code
    2 from the CLI, no trace) instead of waiting out its timeout."""
    with redis_server(tmp_path / "redis") as redis_url, s3_server() as s3:
        env = cluster_env(redis_url, s3, tmp_path / "w")
        index = RedisIndex(redis_url)
        with celery_worker("x86-64,aarch64", env, tmp_path / "w.log", concurrency=2, plain=True) as proc:
            deadline = time.monotonic() + 60
            while not index.workers():
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "w.log").read_text()[-3000:]
                time.sleep(0.2)
            (status,) = index.workers()
            assert (status.targets, status.concurrency, status.pid, status.inflight) == (
                ("x86-64", "aarch64"), 2, proc.pid, 0)
            assert status.host == socket.gethostname() and status.toolchain["llc"]
            assert index.toolchain("x86-64") == status.toolchain
            listed = subprocess.run([sys.executable, "-m", "farm.cli", "workers", "--json"], env=env, cwd=ROOT,
                                    capture_output=True, text=True, timeout=60)
            (shown,) = json.loads(listed.stdout)
            assert shown["name"] == status.name and shown["targets"] == ["x86-64", "aarch64"], listed.stderr
            table = subprocess.run([sys.executable, "-m", "farm.cli", "workers"], env={**env, "COLUMNS": "200"},
                                   cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert "1 live worker(s)" in table.stdout and "x86-64, aarch64" in table.stdout, table.stdout
        assert index.workers() == [] and index.toolchain("x86-64") is None  # it said goodbye on SIGTERM
        (tmp_path / "hot.farm").write_text("rule unserved_now: (g ?x) => ?x\n")
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "farm.cli", "prewarm", str(tmp_path / "hot.farm"), "--targets",
                               "x86-64"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 2 and "no live worker serves target 'x86-64'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and time.monotonic() - start < 30


def test_a_read_only_node_pulls_with_read_access_alone(tmp_path: Path) -> None:
    """FARM_SHARED_MODE=read-only: a node whose Redis user may only read farm's keys (and bump the hot set) pulls,
    verifies and rewrites, and Redis's ACL log shows it attempted no write; it creates no bucket either. The same
    user without the mode loses its counts (logged), never the pull."""
    from farm.cache.backends import make_store
    from farm.cache.builder import ArtifactBuilder

    with redis_server(tmp_path / "redis") as redis_url, s3_server() as s3:
        builder_config = FarmConfig.from_env(cluster_env(redis_url, s3, tmp_path / "builder"))
        index = RedisIndex(redis_url)
        built = ArtifactBuilder(builder_config, index, make_store(builder_config, index)).ensure_ruleset(
            patterns_from("rule read_only_node: (ro ?x) => (s ?x)")[0][1], "ro_pattern", "x86-64")  # type: ignore[arg-type]
        index.r.execute_command("ACL", "SETUSER", "reader", "on", ">reader-pw", "resetkeys", "~farm:*", "+@read",
                                "+zincrby", "+ping")
        index.r.execute_command("ACL", "LOG", "RESET")
        reader_url = redis_url.replace("redis://", "redis://reader:reader-pw@")

        def node(name: str, **extra: str) -> FarmConfig:
            return FarmConfig.from_env(cluster_env(reader_url, s3, tmp_path / name, **extra))

        pulled = pull("ro_pattern", node("ro", FARM_SHARED_MODE="read-only"), "x86-64")
        assert pulled.meta.key == built.meta.key and pulled.native is not None
        graph = TermGraph(pulled.native.ruleset.make_signature())
        assert pulled.native.rewrite(graph, graph.parse("(ro 1)")).texts() == ["(s 1)"]
        assert index.r.execute_command("ACL", "LOG") == []  # no command refused: none attempted
        with pytest.raises(Exception, match="read-only"):
            make_store(node("ro-put", FARM_SHARED_MODE="read-only")).delete(built.meta.key)
        with pytest.raises(Exception, match="no artifact"):
            pull("ro_pattern", node("ro-absent", FARM_SHARED_MODE="read-only", FARM_S3_BUCKET="farm-absent"), "x86-64")
        assert "farm-absent" not in {b.name for b in make_store(builder_config).client.list_buckets()}  # type: ignore[attr-defined]
        assert pull("ro_pattern", node("rw"), "x86-64").meta.key == built.meta.key  # counts refused, pull served
        assert index.r.execute_command("ACL", "LOG")  # the refused counting writes


def test_unserved_target_is_a_clear_error(cluster: dict[str, str]) -> None:
    coord = coordinator(cluster, "coord-u")
    (pid, rs), = patterns_from("rule lonely: (f ?x ?x) => ?x")
    with pytest.raises(NoWorkerForTarget, match="farm worker --targets x86-64-v4"):
        coord.request(CompileRequest.for_ruleset(pid, rs, "x86-64-v4", 0))  # type: ignore[arg-type]


def test_hot_patterns_and_cli(cluster: dict[str, str], tmp_path: Path) -> None:
    import subprocess
    import sys

    from .conftest import ROOT

    env = cluster_env(cluster["redis"], cluster["s3"], tmp_path / "cli", FARM_VERIFY_KEY=cluster["verify_key"],
                      COLUMNS="200")
    hot = tmp_path / "hot.farm"
    hot.write_text("rule hot_a: (f (g ?x) ?y) => (h ?y ?x)\nrule hot_b: (f 1 ?y) => ?y\n")
    run = [sys.executable, "-m", "farm.cli"]
    first = subprocess.run(run + ["prewarm", str(hot), "--targets", "x86-64,aarch64", "-O", "0"], env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(run + ["prewarm", str(hot), "--targets", "x86-64,aarch64", "-O", "0"], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "already cached" in second.stderr
    for target in ("x86-64", "aarch64"):  # compiled 0, already cached 2, failed 0
        assert re.search(rf"{target}\s*│\s*0\s*│\s*2\s*│\s*0\s*│", second.stderr), second.stderr
    terms = tmp_path / "t.terms"
    terms.write_text(" ".join(f"(f (g a{i}) b)" for i in range(40)) + " (f 1 c)")
    pulled = subprocess.run(run + ["pull", "hot_a", "--rewrite", str(terms)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.splitlines()[-41:] == [f"(h b a{i})" for i in range(40)] + ["(f 1 c)"]
    hot_list = subprocess.run(run + ["hot", "--top", "5"], env=env, cwd=ROOT, capture_output=True, text=True)
    first_row = next(line for line in hot_list.stdout.splitlines() if line.startswith("│ 1 "))
    assert "hot_a" in first_row  # 2 requests + 40 native firings put it on top
    assert os.environ.get("FARM_REDIS_URL") is None  # the tests never leak cluster settings into this process
    assert keys.queue("x86-64") == "farm.compile.x86-64"


@contextmanager
def worker_in_this_process(cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch, cache: str,
                           **extra: str) -> Iterator[None]:
    """The worker side of tasks (farm.cluster.coordinator.worker_compile), run in this process with a worker's settings
    against the real Redis and S3."""
    from farm.cluster import coordinator as farm_cluster

    env = cluster_env(cluster["redis"], cluster["s3"], Path(cluster["tmp"]) / cache,
                      FARM_SIGNING_KEY=cluster["signing_key"], **extra)
    for name, value in env.items():
        if name.startswith("FARM_"):
            monkeypatch.setenv(name, value)
    farm_cluster._worker.cache_clear()
    try:
        yield
    finally:
        farm_cluster._worker.cache_clear()


def test_redeliveries_are_counted_and_capped_into_a_dead_letter(cluster: dict[str, str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker side of a task, run in this process against the real Redis and S3: the same message
    delivered again is counted, and past the cap it is dead-lettered instead of run."""
    from farm.cluster import coordinator as farm_cluster

    with worker_in_this_process(cluster, monkeypatch, "inproc", FARM_MAX_DELIVERIES="3"):
        coord = coordinator(cluster, "coord-d")
        (pid, rs), = patterns_from("rule deliver_me: (f ?x (g 9)) => (g ?x)")
        request = CompileRequest.for_ruleset(pid, rs, "x86-64", 0)  # type: ignore[arg-type]
        key, versions = coord.key_for(request)
        message = CompileMessage(pid, "x86-64", 0, key, versions,
                                 tuple(WirePart.of(name, text) for name, text in request.parts), request.ruleset_json)
        before = coord.index.counters()
        statuses = [farm_cluster.worker_compile(message.to_wire(), "task-redelivered")["status"] for _ in range(4)]
        assert statuses == ["compiled", "cached", "cached", "dead-letter"]
        after = coord.index.counters()
        assert after["redeliveries"] - before.get("redeliveries", 0) == 3
        assert after["dead_letters"] - before.get("dead_letters", 0) == 1
        assert after["compilations_ok"] - before.get("compilations_ok", 0) == 1  # idempotent by content key
        assert coord.index.dead_letters()[-1]["task_id"] == "task-redelivered"


def test_a_shared_module_of_another_release_comes_from_redis_or_the_task_says_it_is_missing(
        cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A message names the runtime by content key. A worker of the same release has that text itself; one of
    another release (here: a runtime text this worker does not generate) fetches it from Redis, checked
    against its key; with Redis holding nothing under the key the task fails and says so, nothing built."""
    from farm.cluster import coordinator as farm_cluster
    from farm.cluster.messages import content_key

    with worker_in_this_process(cluster, monkeypatch, "shared-mod"):
        coord = coordinator(cluster, "coord-shared")
        (pid, rs), = patterns_from("rule shared_rt: (f ?x (g 8)) => (g ?x)")
        request = CompileRequest.for_ruleset(pid, rs, "x86-64", 0)  # type: ignore[arg-type]
        other_runtime = dict(request.parts)["runtime"] + "\n; a runtime of another farm release\n"
        parts = (("runtime", other_runtime), ("rules", dict(request.parts)["rules"]))
        _, versions = coord.key_for(request)
        key = artifact_key(list(parts), resolve("x86-64"), 0, versions)
        message = CompileMessage(pid, "x86-64", 0, key, versions,
                                 tuple(WirePart.of(name, text) for name, text in parts), request.ruleset_json)
        missing = farm_cluster.worker_compile(message.to_wire(), "task-shared-missing")
        assert missing["status"] == "failed" and "SharedModuleMissing" in missing["error"], missing
        assert coord.index.meta(key) is None
        coord._share({content_key(other_runtime): other_runtime})
        built = farm_cluster.worker_compile(message.to_wire(), "task-shared-found")
        assert (built["status"], built["key"]) == ("compiled", key), built
        assert coord.index.meta(key) is not None
