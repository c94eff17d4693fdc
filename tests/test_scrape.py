"""A scrape of a large farm: with 500,000 indexed artifacts in a real redis-server, the exporter's snapshot
costs a fixed, small number of Redis commands (nothing scans the keyspace) and stays fast. The command
count is the assertion that cannot flake; the time bound is ten times the goal (100 ms), to catch a return
of the SCAN (6 s at this size) on a busy machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from farm.cache import keys
from farm.cache.index.redis import RedisIndex
from farm.cache.metrics import FarmCollector, snapshot

from .servers import redis_server

ARTIFACTS = 500_000
TARGETS = ("x86-64", "x86-64-v3", "aarch64", "aarch64-neoverse-n1")
MAX_COMMANDS = 16

# Fill the index server-side, as the artifact builder's record script leaves it: an artifact hash, the set
# of keys and a pattern entry per artifact (a client pipeline of 1.5 M commands would take most of a minute).
_FILL = """
for i = 1, tonumber(ARGV[1]) do
  local key = string.format('%064x', i)
  redis.call('HSET', 'farm:art:' .. key, 'meta', '{}')
  redis.call('SADD', KEYS[1], key)
  redis.call('HSET', KEYS[2], 'pattern-' .. i, key)
end
return 0
"""


@pytest.fixture(scope="module")
def large_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisIndex]:
    with redis_server(tmp_path_factory.mktemp("scrape")) as url:
        index = RedisIndex(url)
        index.r.eval(_FILL, 2, keys.ARTIFACTS, keys.index("x86-64"), ARTIFACTS)
        for target in TARGETS:
            index.publish_toolchain(target, {"llc": "16.0.6"})
        for i in range(25):
            index.acquire(f"{i:064x}", f"task-{i}", ttl=600)
        index.r.rpush(keys.queue("aarch64"), *[b"message"] * 7)
        assert index.r.dbsize() > ARTIFACTS
        yield index


def commands_run(index: RedisIndex) -> int:
    return int(index.r.info("stats")["total_commands_processed"])


def test_a_scrape_of_a_large_farm_runs_a_fixed_number_of_commands(large_farm: RedisIndex) -> None:
    snapshot(large_farm)  # the scripts are loaded now, not in the count
    before = commands_run(large_farm)
    snap = snapshot(large_farm)
    used = commands_run(large_farm) - before - 1  # the INFO that read the count
    assert snap.artifacts == ARTIFACTS and snap.inflight == 25
    assert snap.queue_depth == {"aarch64": 7, "aarch64-neoverse-n1": 0, "x86-64": 0, "x86-64-v3": 0}
    assert used <= MAX_COMMANDS, f"a scrape ran {used} Redis commands"


def test_a_scrape_of_a_large_farm_is_fast(large_farm: RedisIndex, record_property: pytest.RecordProperty) -> None:
    registry = CollectorRegistry()
    registry.register(FarmCollector(large_farm))
    generate_latest(registry)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        text = generate_latest(registry).decode()
        timings.append(time.perf_counter() - start)
    record_property("scrape_ms", [round(t * 1000, 2) for t in timings])
    assert f"farm_artifacts_stored {float(ARTIFACTS)}" in text
    assert 'farm_queue_depth{target="aarch64"} 7.0' in text and "farm_inflight_compilations 25.0" in text
    assert "farm_build_info{" in text and 'farm_store_bytes{tier="shared"}' in text
    assert min(timings) < 1.0, f"scrapes took {timings} s"


def test_the_in_flight_count_forgets_expired_locks(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        index = RedisIndex(url)
        index.acquire("a" * 64, "t1", ttl=0.1)
        index.acquire("b" * 64, "t2", ttl=60)
        time.sleep(0.25)
        assert index.inflight() == 1 and index.r.zcard(keys.LOCKS) == 1  # the expired one left the set
        index.release("b" * 64, "t2")
        assert index.inflight() == 0 and index.r.zcard(keys.LOCKS) == 0


def test_loading_the_worker_tasks_does_not_import_prometheus_client() -> None:
    """The worker sets its multiprocess metrics directory after importing its modules: prometheus_client picks
    its value store when first imported, so none of them may import it."""
    code = ("import sys, workers.tasks; assert 'prometheus_client' not in sys.modules, "
            "[m for m in sys.modules if m.startswith('prometheus')]")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "FARM_METRICS_PORT": ""})


def test_queue_depths_are_read_where_the_broker_keeps_its_queues(tmp_path: Path) -> None:
    """deploy/ gives the broker a database of its own: the index reads the queues' lengths there."""
    with redis_server(tmp_path) as url:
        broker = url.rsplit("/", 1)[0] + "/2"
        index = RedisIndex(url, broker_url=broker)
        index.publish_toolchain("x86-64", {"llc": "16.0.6"})
        RedisIndex(broker).r.rpush(keys.queue("x86-64"), b"a", b"b", b"c")
        index.r.rpush(keys.queue("x86-64"), b"in the index's database: not a queue")
        assert index.queue_depths() == {"x86-64": 3}
