#!/usr/bin/env python3
"""J2 (issue 14, goal 2): compile latency to the first native result for a ruleset with no library, tiered
(compiled in memory at -O0, the library built in the background) against untiered (the library built first), in
one run, alternating; plus a cold single rule in memory, and a 1000-rule generated ruleset (issue 14, goal 3): tiered
three times, untiered once.

Each sample is a ruleset no cache has seen (the example with one extra rule of a fresh name), in this process
with its imports warm and the runtime's object compiled (a first, untimed sample): `Engine.load` is timed, which
is what a first `Engine.rewrite` waits for before it rewrites. The background build of a sample is waited for,
untimed, before the next one starts. Tiered arith is timed again at the end, with a compile worker process started
up (farm/compiler/parallel.py: as a farm server keeps one, a small ruleset's first compile shares its pieces with
it). Two parts of the tiered path are timed too: tier 0's code generation alone,
and its whole in-memory load (code generated and compiled side by side, then linked), for the profile of what is
left. The first sample of a large ruleset also starts its worker processes (farm/compiler/parallel.py).

Standalone: `python bench/tiered.py [--repeat N]`; in the suite: `scripts/bench --only J2`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import gen_rules  # noqa: E402

from farm.cache.engine import Engine  # noqa: E402
from farm.compiler import parallel  # noqa: E402
from farm.compiler.codegen import llvm  # noqa: E402
from farm.config import FarmConfig  # noqa: E402
from farm.lang.dsl import parse_rules  # noqa: E402
from farm.lang.transduce import RuleSet, transduce_patterns  # noqa: E402

REPEAT = 7
LARGE = 1000  # rules of examples/gen_rules.py's ruleset (issue 14, goal 3)
LARGE_TIERED_SAMPLES = 3
ARITH = (ROOT / "examples/arith.farm").read_text()
_fresh = itertools.count()


def fresh(base: str) -> RuleSet:
    """`base` and one rule no cache has seen: a new fingerprint, the same code to generate and compile."""
    n = f"probe_{time.time_ns()}_{next(_fresh)}"
    declare = f"op {n}/1\n" if "\nop " in base else ""
    rules = parse_rules(f"{base}\n{declare}rule {n}: ({n} ?x) => ?x\n", "bench.farm")
    return transduce_patterns(rules.patterns, rules.declared_ops, warn=False)


def fresh_rule() -> RuleSet:
    """One rule on an operator of a fresh name: a single-rule ruleset no cache has seen."""
    n = f"f_{time.time_ns()}_{next(_fresh)}"
    rules = parse_rules(f"rule r: ({n} ?x) => (g ?x)\n", "bench.farm")
    return transduce_patterns(rules.patterns, rules.declared_ops, warn=False)


def first_load(engine: Engine, ruleset: RuleSet) -> float:
    start = time.perf_counter()
    engine.load(ruleset, "bench")
    seconds = time.perf_counter() - start
    engine.wait_for_builds()
    return seconds


def phases(engine: Engine, base: str) -> dict[str, float]:
    """The tiered path's parts, each on a ruleset of its own: tier 0's code generation alone (what the pipeline's
    main thread does), and the whole in-memory load at -O0, where a thread compiles each module while the next is
    generated, then the modules are linked."""
    ruleset = fresh(base)
    codegen = llvm.LLVMCodegen(ruleset, engine.builder.target().triple)
    start = time.perf_counter()
    codegen.manifest_part()
    for i, chunk in enumerate(codegen.chunks(max(8, -(-len(ruleset.rules) // parallel.TIER0_PIECES)))):
        codegen.chunk_part(i, chunk)
    generated = time.perf_counter()
    engine.load_in_memory(fresh(base), opt_level=0)
    return {"codegen_ms": (generated - start) * 1000, "in_memory_load_ms": (time.perf_counter() - generated) * 1000}


def measure(tmp: Path, repeat: int = REPEAT) -> dict[str, Any]:
    tiered = Engine(FarmConfig(cache_dir=tmp / "j2-tiered"))
    untiered = Engine(FarmConfig(cache_dir=tmp / "j2-untiered", tiered=False))
    runs: dict[str, list[float]] = {"tiered": [], "untiered": [], "single_rule_tiered": []}
    samples: dict[str, Callable[[], float]] = {
        "tiered": lambda: first_load(tiered, fresh(ARITH)),
        "untiered": lambda: first_load(untiered, fresh(ARITH)),
        "single_rule_tiered": lambda: first_load(tiered, fresh_rule())}
    for run in samples.values():  # warm: imports, the runtime's objects at -O0 and -O2
        run()
    for _ in range(repeat):
        for name, run in samples.items():
            runs[name].append(run())
    parts = [phases(tiered, ARITH) for _ in range(repeat)]
    large = gen_rules.generate(LARGE)[0]  # once each: a sample takes seconds
    # tiered three times (the fastest reported: a sample takes about two seconds), untiered once (about ten)
    large_tiered = min(first_load(tiered, fresh(large)) for _ in range(LARGE_TIERED_SAMPLES))
    large_untiered = first_load(untiered, fresh(large))
    # tier 0 as a farm server runs it, with a compile worker started up beforehand (the large ruleset's)
    parallel.prestart_worker()
    deadline = time.monotonic() + 60
    while parallel.cores() > 1 and not parallel._ready_workers(1):
        if time.monotonic() > deadline:
            raise RuntimeError("the compile worker did not start up within 60 s")
        time.sleep(0.01)
    runs["tiered_with_worker"] = [first_load(tiered, fresh(ARITH)) for _ in range(repeat)]
    best = {name: min(values) * 1000 for name, values in runs.items()}
    return {"arith_tiered_ms": best["tiered"], "arith_tiered_with_worker_ms": best["tiered_with_worker"],
            "arith_untiered_ms": best["untiered"],
            "speedup": best["untiered"] / best["tiered"], "single_rule_tiered_ms": best["single_rule_tiered"],
            "arith_tiered_phases_min_ms": {k: min(p[k] for p in parts) for k in parts[0]},
            "rules_1000_tiered_s": large_tiered, "rules_1000_untiered_s": large_untiered,
            "runs_ms": {name: [round(v * 1000, 2) for v in values] for name, values in runs.items()},
            "repeat": repeat}


def markdown(report: dict[str, Any]) -> str:
    phases_ = report["arith_tiered_phases_min_ms"]
    return "\n".join([
        "| first native result, compile latency (min of each, alternating) | ms |", "|---|---|",
        f"| arith.farm (45 rules), untiered: the library built first | {report['arith_untiered_ms']:.1f} |",
        f"| arith.farm, tiered: in memory at -O0, the library in the background | {report['arith_tiered_ms']:.1f} |",
        f"| the same with a compile worker started up (as a farm server keeps one) | "
        f"{report['arith_tiered_with_worker_ms']:.1f} |",
        f"| tier 0's code generation alone | {phases_['codegen_ms']:.1f} |",
        f"| in-memory load (generated and compiled side by side, linked) | {phases_['in_memory_load_ms']:.1f} |",
        f"| one rule, tiered | {report['single_rule_tiered_ms']:.1f} |",
        f"| untiered / tiered | {report['speedup']:.1f}x |",
        f"| {LARGE} generated rules, untiered (one sample), s | {report['rules_1000_untiered_s']:.2f} |",
        f"| {LARGE} generated rules, tiered (fastest of {LARGE_TIERED_SAMPLES}), s | "
        f"{report['rules_1000_tiered_s']:.2f} |"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=REPEAT)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = measure(Path(tmp), args.repeat)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

