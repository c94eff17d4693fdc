from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.cache.engine import Engine
from farm.cache.index.redis import RedisIndex
from farm.cache.signing import KeyPair, write_key_pair
from farm.cache.tiered import wait_for_all
from farm.compiler.policy import check_module, parse_ir
from farm.config import FarmConfig
from farm.lang.dsl import parse_rules
from farm.lang.transduce import RuleSet, transduce_patterns

from .servers import celery_worker, cluster_env, free_port, redis_server, s3_server

# No test starts a `farm server` behind its back: a `farm rewrite` run for want of one starts one otherwise
# (farm/client.py). tests/test_server.py sets FARM_SERVER for what it tests.
os.environ["FARM_SERVER"] = "off"

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))


def ruleset_of(text: str, filename: str = "test.farm") -> RuleSet:
    parsed = parse_rules(text, filename)
    return transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


def check_ir(ir_text: str, source: str = "module", provided: frozenset[str] = frozenset()) -> None:
    """The IR policy on text: LLVM's parse (StageFailed("parse") if it cannot), then check_module, as the in-process
    compile path applies them."""
    check_module(parse_ir(ir_text, source), source, provided)


@pytest.fixture(autouse=True)
def background_builds_finish() -> Iterator[None]:
    """A case's engines finish the libraries they build in the background (farm/cache/tiered.py) before the next
    case starts: no build outlives its case's temporary directory or competes with the next case for the cores."""
    yield
    assert wait_for_all(timeout=600), "a background build was still running 10 minutes after its case"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("FARM_CACHE_DIR", str(path))
    return path


@pytest.fixture
def engine(cache_dir: Path) -> Engine:
    return Engine(FarmConfig.from_env(dict(os.environ)))


@pytest.fixture(scope="session")
def session_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """One cache for tests that only need compiled rulesets, so each ruleset compiles once per run."""
    config = FarmConfig(cache_dir=tmp_path_factory.mktemp("session-cache"), opt_level=1)
    return Engine(config)


CLUSTER_TARGETS = ("x86-64", "aarch64")


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """A builders' key pair, as `farm keygen` makes it: FARM_SIGNING_KEY for builders, FARM_VERIFY_KEY for nodes."""
    return write_key_pair(tmp_path_factory.mktemp("keys") / "builders")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, key_pair: KeyPair) -> Iterator[dict[str, str]]:
    """Workers sign with the private key; tests give nodes cluster["verify_key"] (the public key) only."""
    tmp = tmp_path_factory.mktemp("cluster")
    signing = str(key_pair.private_path)
    with redis_server(tmp) as redis_url, s3_server() as s3:
        workers = []
        metrics_port = free_port()  # the first worker serves its own metrics, its pool's included
        with celery_worker(CLUSTER_TARGETS[0], cluster_env(redis_url, s3, tmp / "w0", FARM_SIGNING_KEY=signing,
                                                           FARM_METRICS_PORT=str(metrics_port)),
                           tmp / "w0.log") as w0, \
             celery_worker(CLUSTER_TARGETS[1], cluster_env(redis_url, s3, tmp / "w1", FARM_SIGNING_KEY=signing),
                           tmp / "w1.log") as w1:
            workers = [w0, w1]
            index = RedisIndex(redis_url)
            deadline = time.monotonic() + 90
            while not all(index.toolchain(t) for t in CLUSTER_TARGETS):
                assert all(w.poll() is None for w in workers), (tmp / "w0.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "workers did not register"
                time.sleep(0.2)
            yield {"redis": redis_url, "s3": s3, "tmp": str(tmp), "signing_key": signing,
                   "verify_key": str(key_pair.public_path),
                   "worker_metrics": f"http://127.0.0.1:{metrics_port}/metrics"}


# Hostile inputs refused in this run, by corpus: counted by the tests as each refusal is asserted.
HOSTILE: dict[str, dict[str, int]] = {}


def count_hostile(corpus: str, what: str, n: int = 1) -> None:
    counts = HOSTILE.setdefault(corpus, {})
    counts[what] = counts.get(what, 0) + n


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures the fault, fuzz and hostile-input tests measured in this run: faults injected, jobs lost,
    cases run, hostile inputs refused."""
    from . import test_faults, test_fuzz

    figures = {**test_faults.FIGURES, **test_fuzz.FIGURES, **HOSTILE}
    if figures:
        terminalreporter.section("farm reliability figures")
        for name, values in figures.items():
            terminalreporter.write_line(f"{name}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
