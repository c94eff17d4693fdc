"""Tiered compilation (farm/cache/tiered.py, issue 14 goal 2): a ruleset with no library rewrites at once from
memory while its library is built in the background; the engine moves to the library when it lands, and the next
process finds it without generating code."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.cache.engine import Engine
from farm.config import FarmConfig
from farm.errors import StageFailed
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet
from farm.semantics.interp import Interpreter

from .conftest import EXAMPLES, ROOT, ruleset_of

IN_MEMORY = Path("<in-memory>")


@pytest.fixture
def config(tmp_path: Path) -> FarmConfig:
    return FarmConfig(cache_dir=tmp_path / "cache", opt_level=2)


def load_example(name: str) -> RuleSet:
    return ruleset_of((EXAMPLES / name).read_text(), name)


def terms() -> str:
    return (EXAMPLES / "arith.terms").read_text()


def normal_forms(engine: Engine, ruleset: RuleSet) -> list[str]:
    graph = TermGraph(ruleset.make_signature())
    result = engine.rewrite(ruleset, graph, graph.parse(terms()), "arith", engine="native")
    assert result.engine == "native"
    return result.texts()


def interpreted(ruleset: RuleSet) -> list[str]:
    graph = TermGraph(ruleset.make_signature())
    return Interpreter(ruleset).rewrite(graph, graph.parse(terms())).texts()


def test_a_ruleset_without_a_library_runs_from_memory_then_moves_to_its_library(config: FarmConfig) -> None:
    ruleset = load_example("arith.farm")
    engine = Engine(config)
    assert engine.load(ruleset, "arith").path == IN_MEMORY  # nothing stored: tier 0, with no build waited for
    assert normal_forms(engine, ruleset) == interpreted(ruleset)
    assert engine.wait_for_builds(timeout=300)
    library = engine.load(ruleset, "arith")
    assert library.path != IN_MEMORY and library.path.is_file()
    assert normal_forms(engine, ruleset) == interpreted(ruleset)  # the same normal forms on both tiers
    counts = engine.builder.index.counters()
    assert (counts.get("misses"), counts.get("hits", 0), counts.get("compilations_ok")) == (1, 0, 1)


NEXT_PROCESS = """
import json, sys
from farm.cache.engine import Engine
from farm.config import FarmConfig
from farm.lang.dsl import load_rules
from farm.lang.terms import TermGraph
from farm.lang.transduce import transduce_patterns
rules = load_rules(sys.argv[1])
ruleset = transduce_patterns(rules.patterns, rules.declared_ops, warn=False)
engine = Engine(FarmConfig(cache_dir=sys.argv[2], opt_level=2))
graph = TermGraph(ruleset.make_signature())
result = engine.rewrite(ruleset, graph, graph.parse(open(sys.argv[3]).read()), "arith", engine="native")
print(json.dumps({"texts": result.texts(), "path": str(engine.load(ruleset, "arith").path),
                  "generated": "farm.compiler.codegen.llvm" in sys.modules, "pending": engine.background.pending()}))
"""


def test_the_library_built_in_the_background_serves_the_next_process(config: FarmConfig) -> None:
    ruleset = load_example("arith.farm")
    engine = Engine(config)
    first = normal_forms(engine, ruleset)
    assert engine.wait_for_builds(timeout=300)
    out = subprocess.run([sys.executable, "-c", NEXT_PROCESS, str(EXAMPLES / "arith.farm"), str(config.cache_dir),
                          str(EXAMPLES / "arith.terms")], capture_output=True, text=True, check=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = json.loads(out.stdout)
    assert seen["texts"] == first
    assert seen["path"] != str(IN_MEMORY) and not seen["generated"] and seen["pending"] == 0  # a hit, no codegen


def test_a_failed_background_build_leaves_the_in_memory_code_serving(config: FarmConfig,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    ruleset = load_example("arith.farm")
    engine = Engine(config)

    def broken(*args: object, **kwargs: object) -> None:
        raise StageFailed("llc", 1, "injected: the staged tools are broken")

    monkeypatch.setattr(engine.builder, "_build_parts", broken)
    with caplog.at_level(logging.WARNING, logger="farm.cache.tiered"):
        assert normal_forms(engine, ruleset) == interpreted(ruleset)
        assert engine.wait_for_builds(timeout=300)
    assert "could not be built in the background" in caplog.text and "injected" in caplog.text
    assert engine.load(ruleset, "arith").path == IN_MEMORY
    assert normal_forms(engine, ruleset) == interpreted(ruleset)
    assert engine.builder.index.counters().get("compilations_failed") == 1


def test_with_tiering_off_the_first_call_waits_for_the_library(config: FarmConfig) -> None:
    ruleset = load_example("arith.farm")
    engine = Engine(FarmConfig(cache_dir=config.cache_dir, opt_level=2, tiered=False))
    assert engine.load(ruleset, "arith").path.is_file()
    assert engine.background.pending() == 0


def test_farm_rewrite_prints_first_then_stores_the_library(tmp_path: Path) -> None:
    """The CLI's cold run answers from memory, then waits for the library, so the warm run is a hit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARM_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "farm.cli", "rewrite", str(EXAMPLES / "arith.farm"), str(EXAMPLES / "arith.terms"),
            "--engine", "native"]
    cold = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    warm = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert cold.returncode == warm.returncode == 0, cold.stderr + warm.stderr
    assert cold.stdout == warm.stdout
    assert "storing the compiled library" in cold.stderr and "storing" not in warm.stderr
    stats = subprocess.run([sys.executable, "-m", "farm.cli", "stats", "--json"], capture_output=True, text=True,
                           env=env, timeout=120, check=True)
    counts = json.loads(stats.stdout)["counters"]
    assert (counts.get("hits"), counts.get("misses")) == (1, 1), counts


def test_quick_switching_holds_while_any_thread_is_inside_and_puts_the_interval_back() -> None:
    """The interpreter lock changes hands every QUICK_SWITCH_INTERVAL while any thread is inside quick_switching,
    entered and left in any order (the tier-0 pipeline and a background build overlap so), and the process's own
    interval is back once the last leaves."""
    import threading

    from farm.locks import QUICK_SWITCH_INTERVAL, quick_switching

    usual = sys.getswitchinterval()
    inside, leave = threading.Event(), threading.Event()

    def background() -> None:
        with quick_switching():
            inside.set()
            leave.wait(30)

    quick = pytest.approx(min(usual, QUICK_SWITCH_INTERVAL), rel=0.01)  # Python keeps it in microseconds
    thread = threading.Thread(target=background)
    thread.start()
    try:
        assert inside.wait(30) and sys.getswitchinterval() == quick
        with quick_switching():
            leave.set()  # the other thread leaves first
            thread.join(30)
            assert sys.getswitchinterval() == quick
    finally:
        leave.set()
        thread.join(30)
    assert sys.getswitchinterval() == usual


def test_a_background_build_switches_quickly(config: FarmConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background build's code generation hands the interpreter lock to the caller's first rewrite within
    QUICK_SWITCH_INTERVAL (at Python's default 5 ms, the Python parts of a rewrite right after a tier-0 load took
    6.6-25 ms instead of 0.4, measured in one process; 0.9-5.2 ms with it)."""
    from farm.cache import engine as engine_module
    from farm.locks import QUICK_SWITCH_INTERVAL

    seen: list[float] = []
    compile_ = engine_module.Engine.compile

    def compile_and_see(self: Engine, *args: object, **kwargs: object) -> object:
        seen.append(sys.getswitchinterval())
        return compile_(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_module.Engine, "compile", compile_and_see)
    engine = Engine(config)
    ruleset = ruleset_of("rule quick: (q ?x) => (r ?x ?x)\n")
    assert str(engine.load(ruleset, "quick").path) == "<in-memory>"
    engine.wait_for_builds()
    assert seen == [pytest.approx(min(QUICK_SWITCH_INTERVAL, sys.getswitchinterval()), rel=0.01)]
    assert sys.getswitchinterval() > 2 * seen[0]  # the process's own interval again
