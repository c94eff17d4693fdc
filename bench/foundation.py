#!/usr/bin/env python3
"""Measure one cold compile (per stage), cache hits, and native vs interpreter rewriting on the same graph.

Run on demand (not in CI):  python3 bench/foundation.py [--repeat N]
Every figure is measured in this run; ratios compare two measurements taken side by side.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.cache.engine import Engine, load_native  # noqa: E402
from farm.config import FarmConfig  # noqa: E402
from farm.lang.dsl import load_rules  # noqa: E402
from farm.lang.terms import TermGraph  # noqa: E402
from farm.lang.transduce import RuleSet, transduce_patterns  # noqa: E402
from farm.runtime.verify import TermGenerator  # noqa: E402
from farm.semantics.interp import Interpreter  # noqa: E402


def ruleset(path: Path) -> RuleSet:
    parsed = load_rules(path)
    return transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


def peano(depth: int) -> tuple[RuleSet, str]:
    from farm.lang.dsl import parse_rules

    parsed = parse_rules("rule plus0: (plus 0 ?y) => ?y\nrule plusS: (plus (s ?x) ?y) => (s (plus ?x ?y))")
    return transduce_patterns(parsed.patterns, warn=False), "(plus " + "(s " * depth + "0" + ")" * depth + " (s 0))"


def throughput(rs: RuleSet, text: str, engine: Engine, fuel: int) -> dict[str, float]:
    native = load_native(rs, engine.compile(rs, "bench"))
    out: dict[str, float] = {}
    for name, run in (("native", native.rewrite), ("interpreter", Interpreter(rs).rewrite)):
        g = TermGraph(rs.make_signature())
        roots = g.parse(text)
        nodes = len(g)
        start = time.perf_counter()
        result = run(g, roots, fuel)
        out[name] = time.perf_counter() - start
        if result.seconds:
            out["native_core"] = result.seconds["rewrite"]
        out["steps"] = sum(result.firings)
        out["nodes"] = nodes
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    console = Console()
    arith = ruleset(ROOT / "examples/arith.farm")

    stage_runs: dict[str, list[float]] = {}
    cold, hits = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            engine = Engine(FarmConfig(cache_dir=Path(tmp), opt_level=2))
            start = time.perf_counter()
            art = engine.compile(arith, "arith", "x86-64")
            cold.append(time.perf_counter() - start)
            for stage, seconds in art.meta.stage_seconds.items():
                stage_runs.setdefault(stage, []).append(seconds)
            for _ in range(20):
                start = time.perf_counter()
                assert engine.compile(arith, "arith", "x86-64").cached
                hits.append(time.perf_counter() - start)
    table = Table(title=f"cold compile of examples/arith.farm ({len(arith.rules)} rules, x86-64, -O2), "
                        f"median of {args.repeat}")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for stage, runs in stage_runs.items():
        table.add_row(stage, f"{statistics.median(runs) * 1000:.1f}")
    table.add_row("whole request (codegen + toolchain + store + index)", f"{statistics.median(cold) * 1000:.1f}")
    table.add_row(f"cache hit, same process (median of {len(hits)})", f"{statistics.median(hits) * 1000:.2f}")
    console.print(table)

    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(FarmConfig(cache_dir=Path(tmp), opt_level=2))
        gen = TermGenerator(arith, random.Random(1), max_depth=6)
        g = TermGraph(arith.make_signature())
        text = " ".join(g.to_text(gen.term(g)) for _ in range(20_000))
        workloads = [("arith: 20,000 random terms", arith, text, 10_000)]
        prs, ptext = peano(200_000)
        workloads.append(("peano: plus on a numeral 200,000 deep", prs, ptext, 10**7))
        table = Table(title="rewriting the same term graph: native vs interpreter")
        for col in ("workload", "input nodes", "rewrite steps", "native s (in .so)", "interpreter s",
                    "native steps/s (in .so)", "interpreter steps/s", "speed-up (in .so)"):
            table.add_column(col, justify="right")
        for name, rs, terms, fuel in workloads:
            m = throughput(rs, terms, engine, fuel)
            table.add_row(name, f"{int(m['nodes']):,}", f"{int(m['steps']):,}",
                          f"{m['native']:.3f} ({m['native_core']:.4f})", f"{m['interpreter']:.3f}",
                          f"{m['steps'] / m['native']:,.0f} ({m['steps'] / m['native_core']:,.0f})",
                          f"{m['steps'] / m['interpreter']:,.0f}",
                          f"{m['interpreter'] / m['native']:.1f}x ({m['interpreter'] / m['native_core']:.0f}x)")
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
