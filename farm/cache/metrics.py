"""Figures of the farm: one snapshot of the shared (or embedded) counters, shown as Prometheus metrics by
the exporter and as tables by `farm stats` / `farm top`.

Counters live where the work is recorded (Redis for the cluster, SQLite embedded) and are read at scrape
time, so totals are right whatever the number of workers. A scrape costs a fixed number of round trips, whatever
the number of artifacts: nothing is found by scanning the keyspace. Field names in the counters hash:
    requests, hits, misses, local_hits, local_misses, compilations_ok:{target}, compilations_failed:{target},
    artifact_bytes_stored, artifact_bytes_pulled, artifact_bytes_indexed (Redis: the store's size), redeliveries,
    dead_letters,
    hist|{stage}|{target}|{le}, hist_sum|{stage}|{target}    (per-stage latency histograms, non-cumulative)
"""

from __future__ import annotations

import math
import platform
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from farm.cache.index import BUCKETS, CacheIndex, Coordination
from farm.cache.index import le as _le
from farm.compiler.codegen.abi import ABI_VERSION

HOT_TOP_K = 10


@dataclass
class Histogram:
    buckets: list[tuple[str, float]]  # (le, cumulative count), ending with +Inf
    total: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket, as PromQL's histogram_quantile does."""
        if not self.count:
            return math.nan
        rank, lower, below = q * self.count, 0.0, 0.0
        for le, cumulative in self.buckets:
            upper = math.inf if le == "+Inf" else float(le)
            if cumulative >= rank:
                if math.isinf(upper):
                    return lower
                inside = cumulative - below
                return lower + (upper - lower) * ((rank - below) / inside if inside else 0)
            lower, below = upper, cumulative
        return lower


@dataclass
class Snapshot:
    tier: str  # "shared" (Redis) or "local" (SQLite)
    counters: dict[str, float]
    compilations: dict[tuple[str, str], float] = field(default_factory=dict)  # (target, ok|failed)
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (stage, target)
    queue_depth: dict[str, int] = field(default_factory=dict)
    live_workers: dict[str, int] = field(default_factory=dict)  # every target ever served -> live workers for it
    inflight: int = 0
    artifacts: int = 0
    artifact_bytes: int = 0
    hot: list[tuple[str, float]] = field(default_factory=list)

    def get(self, name: str) -> float:
        return self.counters.get(name, 0.0)

    @property
    def hit_rate(self) -> float:
        requests = self.get("hits") + self.get("misses")
        return self.get("hits") / requests if requests else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON data (`farm stats --json`): the raw counters and what is derived from them."""
        return {
            "tier": self.tier, "counters": dict(sorted(self.counters.items())),
            "hit_rate": None if math.isnan(self.hit_rate) else self.hit_rate,
            "compilations": [{"target": t, "result": r, "count": n} for (t, r), n in sorted(self.compilations.items())],
            "stage_seconds": [{"stage": stage, "target": target, "runs": h.count, "sum": h.total,
                               "p50": _finite(h.quantile(0.5)), "p95": _finite(h.quantile(0.95)),
                               "buckets": dict(h.buckets)} for (stage, target), h in sorted(self.histograms.items())],
            "queue_depth": self.queue_depth, "live_workers": self.live_workers, "inflight": self.inflight,
            "artifacts": self.artifacts,
            "artifact_bytes": self.artifact_bytes, "hot": [{"pattern": p, "score": s} for p, s in self.hot],
        }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def snapshot(index: CacheIndex) -> Snapshot:
    counters = index.counters()
    snap = Snapshot("shared" if index.shared else "local", counters)
    raw: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    sums: dict[tuple[str, str], float] = {}
    for name, value in counters.items():
        if name.startswith(("compilations_ok:", "compilations_failed:")):
            kind, target = name.split(":", 1)
            snap.compilations[(target, "ok" if kind == "compilations_ok" else "failed")] = value
        elif name.startswith("hist|"):
            _, stage, target, le = name.split("|")
            raw[(stage, target)][le] = value
        elif name.startswith("hist_sum|"):
            _, stage, target = name.split("|")
            sums[(stage, target)] = value
    for target in {t for t, _ in snap.compilations}:  # both series exist per target, so rates never vanish
        for result in ("ok", "failed"):
            snap.compilations.setdefault((target, result), 0.0)
    for series, counts in raw.items():
        running, buckets = 0.0, []
        for bound in BUCKETS:
            running += counts.get(_le(bound), 0.0)
            buckets.append((_le(bound), running))
        snap.histograms[series] = Histogram(buckets, sums.get(series, 0.0))
    snap.artifacts = index.artifact_count()
    snap.artifact_bytes = index.artifact_bytes()
    if isinstance(index, Coordination):  # the cluster's index: queues, work in flight, the hot set
        snap.queue_depth = index.queue_depths()
        snap.live_workers = dict.fromkeys(snap.queue_depth, 0)
        for worker in index.workers():
            for target in worker.targets:
                snap.live_workers[target] = snap.live_workers.get(target, 0) + 1
        snap.inflight = index.inflight()
        snap.hot = index.hot(HOT_TOP_K)
    return snap


def build_info() -> Any:
    """farm_build_info: 1, labelled with what a dashboard or an alert needs to tell releases apart."""
    from prometheus_client.core import GaugeMetricFamily

    from farm import __version__

    info = GaugeMetricFamily("farm_build_info", "farm's version, native ABI and Python", labels=[
        "version", "abi", "python"])
    info.add_metric([__version__, str(ABI_VERSION), platform.python_version()], 1)
    return info


class FarmCollector:
    """A prometheus_client custom collector: reads a snapshot at scrape time and yields metric families."""

    def __init__(self, index: CacheIndex) -> None:
        self.index = index

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        s = snapshot(self.index)
        cache = CounterMetricFamily("farm_cache_requests", "Artifact requests by result and cache tier",
                                    labels=["result", "tier"])
        cache.add_metric(["hit", s.tier], s.get("hits"))
        cache.add_metric(["miss", s.tier], s.get("misses"))
        if s.tier == "shared":
            cache.add_metric(["hit", "local"], s.get("local_hits"))
            cache.add_metric(["miss", "local"], s.get("local_misses"))
        yield cache
        comp = CounterMetricFamily("farm_compilations", "Compilations by target and result",
                                   labels=["target", "result"])
        for (target, result), value in sorted(s.compilations.items()):
            comp.add_metric([target, result], value)
        yield comp
        hist = HistogramMetricFamily("farm_compile_stage_seconds", "Toolchain stage latency",
                                     labels=["stage", "target"])
        for (stage, target), h in sorted(s.histograms.items()):
            hist.add_metric([stage, target], h.buckets, h.total)
        yield hist
        moved = CounterMetricFamily("farm_artifact_bytes", "Artifact bytes stored and pulled", labels=["direction"])
        moved.add_metric(["stored"], s.get("artifact_bytes_stored"))
        moved.add_metric(["pulled"], s.get("artifact_bytes_pulled"))
        yield moved
        yield CounterMetricFamily("farm_redeliveries", "Compile messages delivered again", value=s.get("redeliveries"))
        yield CounterMetricFamily("farm_dead_letters", "Compile messages given up on", value=s.get("dead_letters"))
        yield GaugeMetricFamily("farm_artifacts_stored", "Artifacts in the index", value=s.artifacts)
        stored = GaugeMetricFamily("farm_store_bytes", "Bytes of the indexed artifacts in the store", labels=["tier"])
        stored.add_metric([s.tier], s.artifact_bytes)
        yield stored
        yield build_info()
        yield GaugeMetricFamily("farm_inflight_compilations", "Compilations holding a single-flight lock",
                                value=s.inflight)
        depth = GaugeMetricFamily("farm_queue_depth", "Messages waiting per target queue", labels=["target"])
        for target, n in sorted(s.queue_depth.items()):
            depth.add_metric([target], n)
        yield depth
        live = GaugeMetricFamily("farm_live_workers", "Live workers serving each target ever served (0: none now)",
                                 labels=["target"])
        for target, n in sorted(s.live_workers.items()):
            live.add_metric([target], n)
        yield live
        hot = GaugeMetricFamily("farm_hot_pattern_score", f"Top {HOT_TOP_K} patterns by requests + native firings",
                                labels=["pattern"])
        for pattern, score in s.hot:
            hot.add_metric([pattern], score)
        yield hot
