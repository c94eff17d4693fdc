"""Direct-mode keys (farm/cache/direct.py, issue 14 goal 1): a request for a cached ruleset is answered from the hash
of its inputs, without generating IR; a changed rule, tool version or code generator misses it; an entry whose
library is gone, or that names the wrong one, falls back to the full path and is repaired."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.cache import builder as builder_module
from farm.cache import direct
from farm.cache.engine import Engine
from farm.cache.gc import CLEAR, gc_local
from farm.compiler.codegen import llvm
from farm.config import FarmConfig
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet

from .conftest import EXAMPLES, ROOT, ruleset_of

RULES = "rule r: (f ?x) => (g ?x)\nrule z: (g 0) => 1"
TARGET = "x86-64"


@pytest.fixture
def config(tmp_path: Path) -> FarmConfig:
    # the direct-mode key on the path that builds before it loads; tiering (test_tiered.py) generates the IR once
    # but asks for it three times
    return FarmConfig(cache_dir=tmp_path / "cache", opt_level=0, tiered=False)


@pytest.fixture
def codegen_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fingerprints of the rulesets code was generated for (the IR memo cleared: a run is a real run)."""
    runs: list[str] = []
    real = llvm.ruleset_parts

    def counted(ruleset: RuleSet, *args: object, **kwargs: object) -> list[tuple[str, str]]:
        runs.append(ruleset.fingerprint())
        return real(ruleset, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(llvm, "ruleset_parts", counted)
    return runs


def no_codegen(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a hit generated IR")

    monkeypatch.setattr(llvm, "ruleset_parts", refuse)


def rewrite(engine: Engine, ruleset: RuleSet, text: str = "(f 0) (f 7)") -> list[str]:
    graph = TermGraph(ruleset.make_signature())
    roots = graph.parse(text)
    result = engine.rewrite(ruleset, graph, roots, "p", engine="native", target=TARGET)
    assert result.engine == "native"
    return result.texts()


def test_a_hit_generates_no_ir(config: FarmConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = ruleset_of(RULES)
    built = Engine(config).compile(rules, "p", TARGET)
    assert not built.cached
    no_codegen(monkeypatch)
    engine = Engine(config)  # a new engine, builder and index: what a new process has
    again = engine.compile(rules, "p", TARGET)
    assert again.cached and again.meta.key == built.meta.key
    assert rewrite(Engine(config), rules) == ["1", "(g 7)"]
    assert engine.builder.index.lookup("q", TARGET) is None
    assert engine.compile(rules, "q", TARGET).meta.key == built.meta.key  # another pattern ID, the same inputs
    assert engine.builder.index.lookup("q", TARGET) == built.meta.key  # ... indexed under it as any hit is


def test_a_changed_rule_misses(config: FarmConfig, codegen_runs: list[str]) -> None:
    engine = Engine(config)
    first, changed = ruleset_of(RULES), ruleset_of(RULES.replace("=> 1", "=> 2"))
    engine.compile(first, "p", TARGET)
    engine.compile(first, "p", TARGET)
    assert codegen_runs == [first.fingerprint()]
    other = engine.compile(changed, "p", TARGET)
    assert codegen_runs == [first.fingerprint(), changed.fingerprint()] and not other.cached
    assert rewrite(Engine(config), changed) == ["2", "(g 7)"]


def test_a_changed_tool_version_misses(config: FarmConfig, codegen_runs: list[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rules = ruleset_of(RULES)
    built = Engine(config).compile(rules, "p", TARGET)
    real = builder_module.tool_versions
    monkeypatch.setattr(builder_module, "tool_versions", lambda path="staged": {**real(path), "llc": "llc=16.0.7"})
    rebuilt = Engine(config).compile(rules, "p", TARGET)
    assert len(codegen_runs) == 2 and not rebuilt.cached and rebuilt.meta.key != built.meta.key


def test_a_changed_code_generator_misses_and_finds_the_same_ir_by_content(
        config: FarmConfig, codegen_runs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rules = ruleset_of(RULES)
    built = Engine(config).compile(rules, "p", TARGET)
    monkeypatch.setattr(direct, "this_codegen_version", lambda: "a code generator edited, the same IR")
    again = Engine(config).compile(rules, "p", TARGET)
    assert len(codegen_runs) == 2  # missed by the direct key ...
    assert again.cached and again.meta.key == built.meta.key  # ... found by content: not rebuilt
    Engine(config).compile(rules, "p", TARGET)
    assert len(codegen_runs) == 2  # and recorded under the new direct key


def copy_sources(root: Path) -> Path:
    for path in direct.source_files():
        copy = root / path.relative_to(direct.FARM)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    return root


def test_the_code_generator_version_follows_its_sources(tmp_path: Path) -> None:
    root = copy_sources(tmp_path / "farm")
    assert direct.codegen_version(root) == direct.codegen_version() == direct.this_codegen_version()
    operators = root / "compiler" / "codegen" / "operators.py"
    operators.write_text(operators.read_text() + "\n# an edit\n")
    assert direct.codegen_version(root) != direct.codegen_version()


def test_the_code_generator_version_covers_every_module_the_code_generator_imports() -> None:
    """A module that shapes the IR but is missing from CODEGEN_SOURCES would let a changed code generator serve
    libraries built by the old one."""
    code = ("import json, sys, farm.compiler.codegen.llvm; "
            "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('farm'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    imported = {Path(name).resolve() for name in json.loads(out)}
    not_shaping = {direct.FARM / "__init__.py", direct.FARM / "compiler" / "__init__.py", direct.FARM / "errors.py"}
    assert imported - not_shaping <= set(direct.source_files())


def test_a_direct_entry_whose_library_is_gone_falls_back_and_is_repaired(config: FarmConfig,
                                                                          codegen_runs: list[str]) -> None:
    rules = ruleset_of(RULES)
    engine = Engine(config)
    built = engine.compile(rules, "p", TARGET)
    engine.builder.store.delete(built.meta.key)  # removed behind the index's back
    rebuilt = Engine(config).compile(rules, "p", TARGET)
    assert not rebuilt.cached and rebuilt.meta.key == built.meta.key and len(codegen_runs) == 2
    assert Engine(config).compile(rules, "p", TARGET).cached and len(codegen_runs) == 2  # repaired


def test_an_evicted_library_takes_its_direct_entry_with_it(config: FarmConfig, codegen_runs: list[str]) -> None:
    rules = ruleset_of(RULES)
    engine = Engine(config)
    built = engine.compile(rules, "p", TARGET)
    direct_key = engine.builder.direct_key_for(rules, engine.builder.target(TARGET), 0)
    assert engine.builder.index.lookup_direct(direct_key) == built.meta.key
    assert engine.builder.local_tier is not None
    assert gc_local(engine.builder.local_tier, CLEAR).artifacts_evicted == 1
    assert engine.builder.index.lookup_direct(direct_key) is None
    assert rewrite(Engine(config), rules) == ["1", "(g 7)"] and len(codegen_runs) == 2


def test_a_direct_entry_naming_another_library_is_refused_and_repaired(config: FarmConfig, codegen_runs: list[str],
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    rules = ruleset_of(RULES)
    engine = Engine(config)
    other = engine.compile(rules, "p", TARGET, opt_level=1)  # the same ruleset at another -O: another library
    direct_key = engine.builder.direct_key_for(rules, engine.builder.target(TARGET), 0)
    engine.builder.index.record_direct(direct_key, other.meta.key)  # as a corrupt or edited index might
    right = Engine(config).compile(rules, "p", TARGET)
    assert right.meta.opt_level == 0 and right.meta.key != other.meta.key
    assert "not built from the inputs its direct-mode entry names" in caplog.text
    assert engine.builder.index.lookup_direct(direct_key) == right.meta.key
    assert rewrite(Engine(config), rules) == ["1", "(g 7)"]


# ---- a new process ----

WARM_REWRITE = """
import sys
from farm.cli import main
code = main(sys.argv[1:])
print("LOADED", *sorted(sys.modules), file=sys.stderr)
sys.exit(code)
"""
# What a cached rewrite must not import: the code generator and LLVM, the build side (toolchain, IR policy, object
# cache, collector), the interpreter, signing's cryptography (no key configured), a process pool, the cluster's
# clients, rich (no table is drawn), logging (nothing is logged: farm/log.py) and the other commands' modules.
NOT_ON_A_HIT = ("llvmlite", "cryptography", "multiprocessing", "concurrent", "celery", "kombu", "redis", "minio",
                "prometheus_client", "rich", "logging", "farm.compiler.codegen", "farm.lang.serialize",
                "farm.compiler.toolchain", "farm.compiler.policy", "farm.cache.gc", "farm.cache.objcache",
                "farm.semantics.interp", "farm.cluster", "farm.cli.build", "farm.cli.cache", "farm.cli.cluster",
                "farm.cli.config", "farm.cli.keys", "farm.cli.stats")
ALLOWED = {"farm.compiler.codegen", "farm.compiler.codegen.abi"}  # the C ABI: the loader's ctypes types come from it


def not_on_a_hit(loaded: set[str]) -> set[str]:
    return {name for name in loaded - ALLOWED
            if any(name == prefix or name.startswith(prefix + ".") for prefix in NOT_ON_A_HIT)}


def test_the_modules_a_hit_must_not_import_are_told_apart_by_name() -> None:
    assert not_on_a_hit({"rich", "rich.table", "llvmlite.binding", "farm.compiler.codegen.llvm", "redis.client",
                         "farm.cli.stats"}) == {"rich", "rich.table", "llvmlite.binding", "farm.compiler.codegen.llvm",
                                                "redis.client", "farm.cli.stats"}
    assert not_on_a_hit({"richtext", "farm.compiler.tools", "farm.compiler.codegen.abi", "farm.cli.rewrite",
                         "farm.cache.gcx", "concurrent_log"}) == set()


@pytest.mark.parametrize("compile_path", ["staged", "inprocess"])
def test_a_warm_farm_rewrite_imports_only_what_a_hit_needs(tmp_path: Path, compile_path: str) -> None:
    """Not llvmlite nor the code generator, nor anything of NOT_ON_A_HIT."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARM_CACHE_DIR": str(tmp_path / "cache"),
           "XDG_CACHE_HOME": str(tmp_path / "home"), "FARM_COMPILE_PATH": compile_path}
    argv = [sys.executable, "-c", WARM_REWRITE, "rewrite", str(EXAMPLES / "arith.farm"),
            str(EXAMPLES / "arith.terms"), "--engine", "native"]
    run: Callable[[], subprocess.CompletedProcess[str]] = lambda: subprocess.run(  # noqa: E731
        argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    cold, warm = run(), run()
    assert cold.returncode == warm.returncode == 0, cold.stderr + warm.stderr
    assert warm.stdout == cold.stdout
    assert not_on_a_hit(set(warm.stderr.split("LOADED")[1].split())) == set()
    assert "llvmlite" in cold.stderr.split("LOADED")[1].split()  # the cold run did generate code
