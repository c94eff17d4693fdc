"""Monitoring and deployment: a real Prometheus scrapes a real exporter after a farm run, and every query of
the Grafana dashboard returns data; promtool checks deploy/prometheus.yml (tests/test_deploy.py checks the compose
file and the Kubernetes manifests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.cache.pull import pull
from farm.cluster.coordinator import CompileRequest
from farm.config import FarmConfig
from farm.lang.dsl import parse_rules
from farm.lang.terms import TermGraph
from farm.lang.transduce import transduce_patterns
from workers.app import make_coordinator

from .conftest import ROOT
from .servers import cluster_env, free_port, http_process

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "farm.json"


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def http_json(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_promtool_accepts_the_deploy_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/test installs Debian's prometheus package"
    result = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_are_valid_and_each_fires_when_it_should() -> None:
    """promtool checks the rules, then runs deploy/alerts.test.yml: each alert on series that fire it (a target
    losing its last worker, dead letters, a failure rate, a growing queue, the exporter down) and not on
    those that should not."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/test installs Debian's prometheus package"
    for argv in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        result = subprocess.run([promtool, *argv], capture_output=True, text=True, cwd=DEPLOY)
        assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_alerts_read_metrics_the_exporter_serves() -> None:
    """Every farm_* metric an alert names is one the exporter yields (a renamed metric silences an alert)."""
    import re

    from farm.cache.index.memory import MemoryIndex
    from farm.cache.metrics import FarmCollector

    served = {family.name for family in FarmCollector(MemoryIndex()).collect()}
    served |= {f"{name}_total" for name in served}
    named = set(re.findall(r"\bfarm_[a-z_]+", (DEPLOY / "alerts.yml").read_text()))
    assert named and named <= served, named - served


def test_dashboard_is_provisioned_against_the_prometheus_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    provisioned = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {"farm-prometheus"} and "uid: farm-prometheus" in provisioned
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("compil", "failure", "latency", "hit rate", "queue", "artifacts stored", "hot"):
        assert topic in titles


@pytest.fixture
def exporter(cluster: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = cluster_env(cluster["redis"], cluster["s3"], tmp_path / "exporter")
    with http_process([sys.executable, "-m", "farm.cli", "exporter", "--port", str(port), "--host", "127.0.0.1"],
                      f"http://127.0.0.1:{port}/metrics", "farm exporter", env=env, cwd=ROOT):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def prometheus(exporter: str, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: scripts/test installs Debian's prometheus package"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: farm\n"
                      f"    static_configs:\n      - targets: ['{exporter}']\n")
    with http_process([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                       f"--web.listen-address=127.0.0.1:{port}"], f"http://127.0.0.1:{port}/-/ready", "prometheus"):
        yield f"http://127.0.0.1:{port}"


def test_every_dashboard_query_returns_data_from_a_real_prometheus(cluster: dict[str, str], prometheus: str,
                                                                    tmp_path: Path) -> None:
    env = cluster_env(cluster["redis"], cluster["s3"], tmp_path / "coord", FARM_VERIFY_KEY=cluster["verify_key"])
    coord = make_coordinator(FarmConfig.from_env(env))
    parsed = parse_rules("\n".join(f"rule mon_{i}: (f (g ?x) {i}) => (h ?x {i})" for i in range(6)))
    time.sleep(3)  # a few scrapes before the run, so rates have a baseline
    for _ in range(2):  # activity spread over several scrapes: misses, then hits
        requests = [CompileRequest.for_ruleset(p.name, transduce_patterns([p], warn=False), t, 0)
                    for p in parsed.patterns for t in ("x86-64", "aarch64")]
        assert all(o.status in ("compiled", "cached") for o in coord.ensure(requests, timeout=300))
        time.sleep(2)
    node = cluster_env(cluster["redis"], cluster["s3"], tmp_path / "node", FARM_VERIFY_KEY=cluster["verify_key"])
    pulled = pull("mon_3", FarmConfig.from_env(node))
    assert pulled.native is not None
    graph = TermGraph(pulled.native.ruleset.make_signature())
    result = pulled.native.rewrite(graph, graph.parse(" ".join(f"(f (g a{i}) 3)" for i in range(25))))
    coord.index.note_hot("mon_3", sum(result.firings))
    time.sleep(4)
    empty = []
    for expr in dashboard_queries():
        answer = http_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", (expr, answer)
        if not answer["data"]["result"]:
            empty.append(expr)
    assert not empty, f"dashboard queries without data: {empty}"
    names = {m for m in http_json(f"{prometheus}/api/v1/label/__name__/values")["data"] if m.startswith("farm_")}
    assert {"farm_compilations_total", "farm_compile_stage_seconds_bucket", "farm_cache_requests_total",
            "farm_artifact_bytes_total", "farm_queue_depth", "farm_inflight_compilations", "farm_redeliveries_total",
            "farm_dead_letters_total", "farm_hot_pattern_score", "farm_artifacts_stored"} <= names
    query = urllib.parse.urlencode({"query": "topk(10, farm_hot_pattern_score)"})
    top = {r["metric"]["pattern"]: float(r["value"][1]) for r in http_json(f"{prometheus}/api/v1/query?{query}")
           ["data"]["result"]}
    assert top.get("mon_3", 0) >= 25 + 2  # 2 requests and 25 native firings


def test_stats_and_top_show_the_shared_counters(cluster: dict[str, str], tmp_path: Path) -> None:
    env = {**cluster_env(cluster["redis"], cluster["s3"], tmp_path / "cli"), "COLUMNS": "160"}
    coord = make_coordinator(FarmConfig.from_env({**env, "FARM_VERIFY_KEY": cluster["verify_key"]}))
    (pattern,) = parse_rules("rule stats_me: (f ?x (h 1 2)) => ?x").patterns
    for target in ("x86-64", "aarch64"):
        coord.artifact(CompileRequest.for_ruleset(pattern.name, transduce_patterns([pattern], warn=False), target, 0))
    stats = subprocess.run([sys.executable, "-m", "farm.cli", "stats"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    for figure in ("requests (shared tier)", "hit rate", "compilations ok", "x86-64 ok", "aarch64 ok", "p50 / p95",
                   "queue depth x86-64", "in-flight compilations", "artifacts stored", "dead letters"):
        assert figure in stats.stdout, figure
    top = subprocess.run([sys.executable, "-m", "farm.cli", "top", "--iterations", "1", "--interval", "0.2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "per second" in top.stdout
