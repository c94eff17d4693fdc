#!/usr/bin/env python3
"""Cluster figures on real components (redis-server, moto S3, Celery workers) on loopback.

  python3 bench/cluster.py [--patterns N] [--hits N]

P-a: pre-warm throughput with one worker vs two (each serving both targets, concurrency 1, -O1).
P-b: shared-hit latency of Coordinator.request, p50/p99, on a node that holds verified copies of the artifacts (it
     pulled them: one Redis round trip) and, alternating with it, on one that holds none (that and one S3 HEAD).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import gen_rules  # noqa: E402

from farm.cluster.coordinator import CompileRequest  # noqa: E402
from farm.config import FarmConfig  # noqa: E402
from farm.lang.dsl import parse_rules  # noqa: E402
from farm.lang.transduce import transduce_patterns  # noqa: E402
from tests.servers import celery_worker, cluster_env, redis_server, s3_server  # noqa: E402
from workers.app import make_coordinator  # noqa: E402

TARGETS = ("x86-64", "aarch64")


def requests_for(n: int, seed: int) -> list[CompileRequest]:
    text, _ = gen_rules.generate(n, seed)
    parsed = parse_rules(text.replace("rule r", f"rule b{seed}_r"))
    return [CompileRequest.for_ruleset(p.name, transduce_patterns([p], parsed.declared_ops, warn=False), t, 1)
            for p in parsed.patterns for t in TARGETS]


def prewarm(workers: int, n: int, seed: int, tmp: Path) -> tuple[float, int]:
    with redis_server(tmp) as redis_url, s3_server() as s3, ExitStack() as stack:
        for w in range(workers):
            stack.enter_context(celery_worker(",".join(TARGETS), cluster_env(redis_url, s3, tmp / f"w{w}"),
                                              tmp / f"w{w}.log"))
        coord = make_coordinator(FarmConfig.from_env(cluster_env(redis_url, s3, tmp / "coord")))
        deadline = time.monotonic() + 90
        while not all(coord.index.toolchain(t) for t in TARGETS):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not register")
            time.sleep(0.2)
        time.sleep(2)  # let every worker finish booting before the clock starts
        reqs = requests_for(n, seed)
        start = time.perf_counter()
        outcomes = coord.ensure(reqs, timeout=1800)
        elapsed = time.perf_counter() - start
        assert all(o.status == "compiled" for o in outcomes), {o.error for o in outcomes}
        return elapsed, len(reqs)


def hit_latency(hits: int, tmp: Path) -> dict[str, list[float]]:
    """Seconds per shared hit, by node: "held", a node that pulled the artifacts (verified copies in its cache);
    "unheld", a node with none. The two alternate, request by request."""
    with redis_server(tmp) as redis_url, s3_server() as s3, \
            celery_worker(",".join(TARGETS), cluster_env(redis_url, s3, tmp / "w"), tmp / "w.log"):
        nodes = {name: make_coordinator(FarmConfig.from_env(cluster_env(redis_url, s3, tmp / name)))
                 for name in ("held", "unheld")}
        while not all(nodes["held"].index.toolchain(t) for t in TARGETS):
            time.sleep(0.2)
        reqs = requests_for(20, 99)
        for outcome in nodes["held"].ensure(reqs, timeout=600):
            assert nodes["held"].store.fetch(outcome.key) is not None  # pulled: downloaded and its sha256 checked
        samples: dict[str, list[float]] = {name: [] for name in nodes}
        for i in range(hits):
            for name, coord in nodes.items():
                start = time.perf_counter()
                outcome = coord.request(reqs[i % len(reqs)])
                samples[name].append(time.perf_counter() - start)
                assert outcome.status == "cached"
        return samples


def p50_p99_ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patterns", type=int, default=60)
    parser.add_argument("--hits", type=int, default=1000)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        one, count = prewarm(1, args.patterns, 1, Path(tmp) / "one")
        two, _ = prewarm(2, args.patterns, 1, Path(tmp) / "two")
        samples = hit_latency(args.hits, Path(tmp) / "hits")
    table = Table(title="cluster on loopback (redis-server, moto S3, Celery prefork workers, concurrency 1)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"pre-warm {count} artifacts ({args.patterns} patterns x 2 targets, -O1), 1 worker",
                  f"{one:.1f} s = {count / one:.1f} artifacts/s")
    table.add_row("the same, 2 workers", f"{two:.1f} s = {count / two:.1f} artifacts/s")
    table.add_row("speed-up, 2 workers vs 1", f"{one / two:.2f}x")
    for name, node in (("held", "a node holding the artifacts"), ("unheld", "a node holding none (+ S3 HEAD)")):
        p50, p99 = p50_p99_ms(samples[name])
        table.add_row(f"shared hit latency p50 / p99, {node} ({len(samples[name])} requests)",
                      f"{p50:.2f} / {p99:.2f} ms")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
