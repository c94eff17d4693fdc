"""Object-level caching and the in-process (llvmlite) compile path."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from farm.cache.engine import Engine, load_native
from farm.config import FarmConfig
from farm.lang.dsl import parse_rules
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet, transduce_patterns
from farm.runtime.verify import TermGenerator, differential

from .conftest import EXAMPLES
from .test_native import elf_header, example


def generated(n: int, change: int | None = None) -> RuleSet:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import gen_rules
    finally:
        sys.path.remove(str(EXAMPLES))
    text, _ = gen_rules.generate(n)
    if change is not None:  # give one rule another target
        lines = text.splitlines()
        i = next(k for k, line in enumerate(lines) if line.startswith(f"rule r{change}:"))
        lines[i] = lines[i].split("=>")[0] + "=> (c3 c0)"
        text = "\n".join(lines)
    parsed = parse_rules(text)
    return transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


def test_changing_one_rule_relinks_instead_of_recompiling_everything(tmp_path: Path) -> None:
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=1))
    first = engine.compile(generated(1000), "big")
    assert first.meta.objects_compiled >= 10  # runtime, manifest and the chunks
    changed_rules = generated(1000, change=500)
    second = engine.compile(changed_rules, "big")
    assert second.meta.key != first.meta.key
    assert (second.meta.objects_compiled, second.meta.objects_reused) == (2, first.meta.objects_compiled - 2)
    assert sum(second.meta.stage_seconds.values()) < sum(first.meta.stage_seconds.values()) / 3
    report = differential(changed_rules, load_native(changed_rules, second), cases=300, seed=4, fuel=10_000)
    assert report.ok, report.mismatches[:3]


def test_runtime_object_is_shared_by_rulesets(tmp_path: Path) -> None:
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=1))
    engine.compile(example("bool"), "bool")
    arith = engine.compile(example("arith"), "arith")
    assert (arith.meta.objects_compiled, arith.meta.objects_reused) == (1, 1)


def test_in_process_path_rewrites_exactly_like_the_staged_path(tmp_path: Path) -> None:
    staged = Engine(FarmConfig(cache_dir=tmp_path / "staged", opt_level=2))
    inproc = Engine(FarmConfig(cache_dir=tmp_path / "inproc", opt_level=2, compile_path="inprocess"))
    for name in ("arith", "bool"):
        rs = example(name)
        a, b = staged.compile(rs, name, "x86-64"), inproc.compile(rs, name, "x86-64")
        assert set(b.meta.stage_seconds) == {"parse", "policy", "opt", "codegen", "ld"}
        assert a.meta.key != b.meta.key and b.meta.toolchain["path"] == "inprocess"
        gen = TermGenerator(rs, random.Random(9), max_depth=5)
        g = TermGraph(rs.make_signature())
        texts = [g.to_text(gen.term(g)) for _ in range(1500)]
        results = []
        for art in (a, b):
            graph = TermGraph(rs.make_signature())
            results.append(load_native(rs, art).rewrite(graph, [graph.parse(t)[0] for t in texts]))
        assert results[0].texts() == results[1].texts() and results[0].firings == results[1].firings
    aarch64 = inproc.compile(example("arith"), "arith", "aarch64")
    assert elf_header(aarch64.path) == (3, 183)


def test_in_memory_load_rewrites_like_the_interpreter(tmp_path: Path) -> None:
    from farm.semantics.interp import Interpreter

    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=2))
    for name in ("arith", "bool"):
        rs = example(name)
        native = engine.load_in_memory(rs, "x86-64")
        assert str(native.path) == "<in-memory>"
        gen = TermGenerator(rs, random.Random(11), max_depth=5)
        g = TermGraph(rs.make_signature())
        texts = [g.to_text(gen.term(g)) for _ in range(1500)]
        g1, g2 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
        a = native.rewrite(g1, [g1.parse(t)[0] for t in texts])
        b = Interpreter(rs).rewrite(g2, [g2.parse(t)[0] for t in texts])
        assert a.texts() == b.texts() and a.firings == b.firings and sum(a.firings) > 0
    assert list((tmp_path / "objcache").rglob("*.o"))  # the shared runtime object is kept for next time


def test_in_memory_refuses_code_this_host_cannot_run(tmp_path: Path) -> None:
    import pytest

    from farm.errors import IncompatibleArtifact

    with pytest.raises(IncompatibleArtifact, match="cannot load aarch64 code into this process"):
        Engine(FarmConfig(cache_dir=tmp_path)).load_in_memory(example("bool"), "aarch64")


def test_a_build_reports_each_module_it_parses_and_compiles(tmp_path: Path) -> None:
    """What `farm compile` draws its bar from: every module parsed, then every module compiled, in order; a
    rebuild that reuses objects counts only what it compiles, and a cache hit reports nothing."""
    from farm.compiler.toolchain import reporting_progress

    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0, compile_path="inprocess"))
    heard: list[tuple[str, int, int]] = []
    with reporting_progress(lambda step, done, total: heard.append((step, done, total))):
        first = engine.compile(generated(300), "big")
        n = first.meta.objects_compiled
        assert n >= 3 and heard == [("parsing", k, n) for k in range(1, n + 1)] + \
            [("compiling", k, n) for k in range(1, n + 1)]
        heard.clear()
        engine.compile(generated(300, change=7), "big")  # one rule chunk and the manifest again
        assert heard == [("parsing", 1, 2), ("parsing", 2, 2), ("compiling", 1, 2), ("compiling", 2, 2)]
        heard.clear()
        engine.compile(generated(300), "big")
        assert heard == []
    engine.compile(generated(300, change=9), "big")  # outside the block: nobody is told
    assert heard == []
