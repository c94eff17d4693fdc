"""Review of tiered compilation (issue 14, goal 2): the failure modes of the background build and of tier 0 — a
process that exits without waiting, a thread that cannot start, a node that loads only signed libraries, a corrupt
object in the object cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from farm.cache.engine import Engine
from farm.cache.signing import KeyPair
from farm.config import FarmConfig
from farm.errors import UnsignedArtifact
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet

from .conftest import EXAMPLES, ROOT, ruleset_of

IN_MEMORY = Path("<in-memory>")


def arith(extra: str = "") -> RuleSet:
    return ruleset_of((EXAMPLES / "arith.farm").read_text() + extra, "arith.farm")


def texts(engine: Engine, ruleset: RuleSet, how: str = "native") -> list[str]:
    graph = TermGraph(ruleset.make_signature())
    result = engine.rewrite(ruleset, graph, graph.parse((EXAMPLES / "arith.terms").read_text()), "arith", engine=how)
    assert result.engine == "native"
    return result.texts()


def run_python(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


REWRITE_AND_EXIT = """
import sys
from pathlib import Path
from farm.cache.engine import Engine
from farm.config import FarmConfig
from farm.lang.terms import TermGraph
from tests.conftest import EXAMPLES, ruleset_of
ruleset = ruleset_of((EXAMPLES / "arith.farm").read_text())
engine = Engine(FarmConfig(cache_dir=Path(sys.argv[1]), opt_level=2))
graph = TermGraph(ruleset.make_signature())
engine.rewrite(ruleset, graph, graph.parse("(add 1 2)"), "arith", engine="native")
# no wait_for_builds(): "a process that exits waits for them, so the library it started lands" (tiered.py)
"""


def test_a_process_that_exits_without_waiting_still_stores_its_library(tmp_path: Path) -> None:
    """At exit, concurrent.futures stops taking work before the non-daemon threads are joined; the staged build
    submits its stages to a pool of its own, so it failed with "cannot schedule new futures after interpreter
    shutdown" and the next process missed again."""
    cache = tmp_path / "cache"
    out = run_python(REWRITE_AND_EXIT, str(cache))
    assert out.returncode == 0, out.stderr
    assert "could not be built" not in out.stderr, out.stderr
    assert list((cache / "objects").rglob("*.so")), "the library built in the background was not stored"
    counts = Engine(FarmConfig(cache_dir=cache, opt_level=2)).builder.index.counters()
    assert (counts.get("misses"), counts.get("compilations_ok")) == (1, 1), counts


def test_a_build_thread_that_cannot_start_leaves_tier_0_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """RuntimeError("can't start new thread") (RLIMIT_AS, RLIMIT_NPROC) from the executor escaped Engine.load and
    engine="auto" with a traceback, after tier 0 had compiled."""
    start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        if thread.name.startswith("farm-tier-up"):
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    engine = Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=2))
    ruleset = arith()
    with caplog.at_level(logging.WARNING, logger="farm"):
        first = texts(engine, ruleset, "auto")
        assert engine.load(ruleset, "arith").path == IN_MEMORY
    assert [r.getMessage() for r in caplog.records if "can't start new thread" in r.getMessage()], caplog.text
    assert not any(r.exc_info for r in caplog.records)
    monkeypatch.setattr(threading.Thread, "start", start)
    assert texts(engine, ruleset) == first
    assert engine.wait_for_builds(timeout=300) and engine.background.pending() == 0


def test_a_failed_background_build_that_is_not_farms_own_error_is_counted(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One miss and one failed compilation, whatever the build raised: a RuntimeError or an OSError counted the
    miss and no outcome."""
    engine = Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=2))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(engine.builder, "_build_parts", broken)
    texts(engine, arith())
    assert engine.wait_for_builds(timeout=300)
    counts = engine.builder.index.counters()
    assert (counts.get("misses"), counts.get("compilations_failed"), counts.get("compilations_ok")) == (1, 1, None)


def test_a_node_that_loads_only_signed_libraries_does_not_run_its_own_unsigned_code(tmp_path: Path,
                                                                                     key_pair: KeyPair) -> None:
    """With FARM_VERIFY_KEY and no FARM_SIGNING_KEY, the library this node builds is refused (UnsignedArtifact).
    Tier 0 ran the same unsigned code from memory in the first process, stored the unsigned library, and the next
    process then failed on it: the first call must refuse as the untiered path does."""
    config = FarmConfig(cache_dir=tmp_path / "cache", opt_level=2, verify_keys=(key_pair.public_path,))
    ruleset = arith()
    with pytest.raises(UnsignedArtifact):
        texts(Engine(config), ruleset, "auto")
    with pytest.raises(UnsignedArtifact):  # the next process: the same answer
        texts(Engine(config), ruleset, "auto")


def test_a_builder_that_signs_still_tiers(tmp_path: Path, key_pair: KeyPair) -> None:
    config = FarmConfig(cache_dir=tmp_path / "cache", opt_level=2, signing_key=key_pair.private_path)
    engine = Engine(config)
    ruleset = arith()
    first = texts(engine, ruleset)
    assert engine.load(ruleset, "arith").path == IN_MEMORY
    assert engine.wait_for_builds(timeout=300)
    assert engine.load(ruleset, "arith").path.is_file() and texts(engine, ruleset) == first


CORRUPT_OBJECT_CACHE = """
import json, sys
from pathlib import Path
from farm.cache.engine import Engine
from farm.config import FarmConfig
from farm.lang.terms import TermGraph
from tests.conftest import EXAMPLES, ruleset_of
cache = Path(sys.argv[1])
base = (EXAMPLES / "arith.farm").read_text()
first = Engine(FarmConfig(cache_dir=cache, opt_level=2))
ruleset = ruleset_of(base)
graph = TermGraph(ruleset.make_signature())
first.rewrite(ruleset, graph, graph.parse("(add 1 2)"), "a")
first.wait_for_builds()
for path in (cache / "objcache").rglob("*.o"):  # truncated, as by a full disk or a crash of another writer
    path.write_bytes(path.read_bytes()[:200])
ruleset = ruleset_of(base + "rule extra: (add ?x (add ?y 100)) => (add ?x ?y)")
graph = TermGraph(ruleset.make_signature())
result = Engine(FarmConfig(cache_dir=cache, opt_level=2)).rewrite(ruleset, graph, graph.parse("(add 1 2)"), "b")
print(json.dumps(result.texts()))
"""


def test_a_corrupt_object_in_the_object_cache_does_not_crash_tier_0(tmp_path: Path) -> None:
    """Tier 0 reads the runtime's object from objcache/ and hands it to MCJIT with no check (no sha256, no load
    policy): a truncated file killed the process with SIGSEGV. The untiered path reports ld's error and falls back."""
    out = run_python(CORRUPT_OBJECT_CACHE, str(tmp_path / "cache"))
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    assert json.loads(out.stdout) == ["3"]
