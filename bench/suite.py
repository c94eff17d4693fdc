#!/usr/bin/env python3
"""The benchmark suite (`scripts/bench`): P1..P5 and J1, each target a ratio of two things measured in this run.

Writes bench-out/report.json, bench-out/report.md and bench-out/scaling.png. Run on demand, not in CI.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import gen_rules  # noqa: E402

from bench import maude, startup, tiered  # noqa: E402
from bench.cluster import hit_latency, p50_p99_ms, prewarm  # noqa: E402
from farm.cache.engine import Engine, load_native  # noqa: E402
from farm.cache.jit import JitCompiler, JitConfig  # noqa: E402
from farm.config import FarmConfig  # noqa: E402
from farm.lang.dsl import load_rules, parse_rules  # noqa: E402
from farm.lang.terms import TermGraph  # noqa: E402
from farm.lang.transduce import RuleSet, transduce_patterns  # noqa: E402
from farm.runtime.verify import TermGenerator  # noqa: E402
from farm.semantics.interp import Interpreter  # noqa: E402


def ruleset(text: str) -> RuleSet:
    parsed = parse_rules(text)
    return transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def engine(tmp: Path, name: str, path: str = "staged", opt: int = 2) -> Engine:
    return Engine(FarmConfig(cache_dir=tmp / name, opt_level=opt, compile_path=path))


def p1(tmp: Path, repeat: int) -> dict[str, Any]:
    """Cold compile of one new rule (the shared runtime object already cached), staged vs in-process;
    and a 1000-rule ruleset compiled as one batch vs one rule at a time."""
    out: dict[str, Any] = {}
    for path in ("staged", "inprocess"):
        e = engine(tmp, f"p1-{path}", path)
        e.compile(ruleset("rule warm: (w ?x) => ?x"), "warm", "x86-64")
        runs, stages = [], []
        for i in range(repeat):
            rs = ruleset(f"rule r{i}: (f (g ?x) {i}) => (h ?x {i})")
            start = time.perf_counter()
            art = e.compile(rs, f"one-{i}", "x86-64")
            runs.append(time.perf_counter() - start)
            stages.append(art.meta.stage_seconds)
        compile_only = [sum(v for k, v in s.items() if k != "ld") for s in stages]
        out[path] = {"median_ms": statistics.median(runs) * 1000,
                     "compile_stages_median_ms": statistics.median(compile_only) * 1000,
                     "stages_median_ms": {k: statistics.median(s[k] for s in stages) * 1000 for k in stages[0]}}
    e = engine(tmp, "p1-memory")
    e.load_in_memory(ruleset("rule warm: (w ?x) => ?x"), "x86-64")
    memory = []
    for i in range(repeat):
        rs = ruleset(f"rule m{i}: (f (g ?x) {i}) => (h ?x {i})")
        memory.append(timed(lambda: e.load_in_memory(rs, "x86-64")))  # noqa: B023
    out["in_memory"] = {"median_ms": statistics.median(memory) * 1000}
    out["in_memory_speedup"] = out["staged"]["median_ms"] / out["in_memory"]["median_ms"]
    out["inprocess_speedup"] = out["staged"]["median_ms"] / out["inprocess"]["median_ms"]
    out["inprocess_speedup_compile_stages"] = (out["staged"]["compile_stages_median_ms"]
                                               / out["inprocess"]["compile_stages_median_ms"])
    text, _ = gen_rules.generate(1000)
    big = ruleset(text)
    for path in ("staged", "inprocess"):
        e = engine(tmp, f"p1-batch-{path}", path)
        seconds = timed(lambda: e.compile(big, "batch", "x86-64"))  # noqa: B023
        out[f"batch_1000_{path}_s"] = seconds
        out[f"batch_per_rule_{path}_ms"] = seconds / 1000 * 1000
    out["batch_vs_one_at_a_time_staged"] = out["staged"]["median_ms"] / out["batch_per_rule_staged_ms"]
    out["batch_inprocess_vs_one_at_a_time_staged"] = out["staged"]["median_ms"] / out["batch_per_rule_inprocess_ms"]
    return out


def p2(tmp: Path) -> dict[str, Any]:
    jit = JitCompiler(JitConfig(work_dir=tmp / "p2w", cache_dir=tmp / "p2c"))
    ir = "define i64 @f(i64 %x) {\n  %r = add i64 %x, 1\n  ret i64 %r\n}\n"
    jit.compile_llvm_ir(ir, "p")
    samples = []
    for _ in range(5000):
        start = time.perf_counter()
        jit.compile_llvm_ir(ir, "p")
        samples.append(time.perf_counter() - start)
    arith = load_rules(ROOT / "examples/arith.farm")
    Engine(FarmConfig(cache_dir=tmp / "p2s")).compile(transduce_patterns(arith.patterns, arith.declared_ops,
                                                                         warn=False), "arith")
    code = ("import time, json; from farm.lang.dsl import load_rules; "
            "from farm.lang.transduce import transduce_patterns;"
            "from farm.cache.engine import Engine; p = load_rules('examples/arith.farm');"
            "rs = transduce_patterns(p.patterns, p.declared_ops, warn=False); e = Engine();"
            "t = time.perf_counter(); a = e.compile(rs, 'arith');"
            "print(json.dumps([a.cached, time.perf_counter() - t]))")
    new_process = []
    for _ in range(5):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "FARM_CACHE_DIR": str(tmp / "p2s")})
        total = time.perf_counter() - start
        cached, inside = json.loads(proc.stdout)
        assert cached
        new_process.append((inside, total))
    return {"lru_hit_median_us": statistics.median(samples) * 1e6,
            "lru_hit_p99_us": sorted(samples)[int(len(samples) * 0.99)] * 1e6,
            "sqlite_hit_new_process_median_ms": statistics.median(x for x, _ in new_process) * 1000,
            "sqlite_hit_new_process_including_startup_ms": statistics.median(t for _, t in new_process) * 1000}


def p4(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    arith_file = load_rules(ROOT / "examples/arith.farm")
    arith = transduce_patterns(arith_file.patterns, arith_file.declared_ops, warn=False)
    e = engine(tmp, "p4")
    native = load_native(arith, e.compile(arith, "arith"))
    gen = TermGenerator(arith, random.Random(1), max_depth=6)
    g = TermGraph(arith.make_signature())
    text = " ".join(g.to_text(gen.term(g)) for _ in range(20_000))
    graphs = [TermGraph(arith.make_signature()) for _ in range(2)]
    roots = [gr.parse(text) for gr in graphs]
    nodes = len(graphs[0])
    interp_s = timed(lambda: Interpreter(arith).rewrite(graphs[0], roots[0]))
    result = native.rewrite(graphs[1], roots[1])
    out["arith_nodes"] = nodes
    out["interpreter_nodes_per_s"] = nodes / interp_s
    out["native_end_to_end_nodes_per_s"] = nodes / sum(result.seconds.values())
    out["native_in_library_nodes_per_s"] = nodes / (result.seconds["import"] + result.seconds["rewrite"])
    out["native_vs_interpreter_end_to_end"] = interp_s / sum(result.seconds.values())
    out["native_vs_interpreter_in_library"] = interp_s / (result.seconds["import"] + result.seconds["rewrite"])
    scaling = {}
    for size in (10, 100, 1000):
        text_rules, sources = gen_rules.generate(size, seed=5)
        rs = ruleset(text_rules)
        nat = load_native(rs, e.compile(rs, f"scale-{size}"))
        # the same work at every size: 20,000 distinct instances of rule sources (variables filled with
        # unique literals, so hash-consing shares nothing), each firing once
        rng = random.Random(6)
        terms = []
        for _ in range(20_000):
            source = rng.choice(sources)
            terms.append(re.sub(r"\?v\d+", lambda _: str(rng.randrange(10**9)), source))  # noqa: B023
        gr = TermGraph(rs.make_signature())
        rts = gr.parse(" ".join(terms))
        res = nat.rewrite(gr, rts)
        scaling[size] = {"nodes": len(gr), "firings": sum(res.firings),
                         "in_library_nodes_per_s": len(gr) / (res.seconds["import"] + res.seconds["rewrite"])}
    out["scaling"] = scaling
    out["ratio_1000_vs_10"] = scaling[1000]["in_library_nodes_per_s"] / scaling[10]["in_library_nodes_per_s"]
    return out


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def p5_load(mode: str, cache: Path, count: int) -> tuple[float, bool]:
    """Resident KB per 1000 of `count` functions compiled (or fetched from `cache`), loaded and each called
    once: one library per function (compile_llvm_ir) or one per batch (compile_batch). Also: were they all
    served from the cache."""
    jit = JitCompiler(JitConfig(work_dir=cache / "work", cache_dir=cache, max_cached_functions=count + 10,
                                compile_path="inprocess"))
    items = [(f"define i64 @f(i64 %x) {{\n  %r = add i64 %x, {k}\n  ret i64 %r\n}}\n", f"fn-{k}")
             for k in range(count)]
    jit.compile_llvm_ir("define i64 @g(i64 %x) {\n  ret i64 %x\n}\n", "warm")
    before = rss_kb()
    functions = (jit.compile_batch(items) if mode == "batch"
                 else [jit.compile_llvm_ir(ir, pattern_id) for ir, pattern_id in items])
    call = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)
    assert all(f.function_pointer is not None and call(f.function_pointer)(1) == k + 1 for k, f in enumerate(functions))
    return (rss_kb() - before) * 1000 / count, all(f.from_cache for f in functions)


def p5(tmp: Path, count: int) -> dict[str, Any]:
    """Resident memory per 1000 cached functions, on a node: a fresh process loads functions compiled
    earlier (so the compiler's own heap is not counted) and calls each once. One library per function is
    measured on a fifth as many (each is a link); one library per batch on all of them."""
    report: dict[str, Any] = {"functions": count}
    for mode, n in (("one", max(count // 5, 1)), ("batch", count)):
        cache = tmp / f"p5-{mode}"
        report[f"kb_per_1000_{mode}_compiling_process"] = p5_load(mode, cache, n)[0]
        node = subprocess.run([sys.executable, __file__, "--p5-node", mode, str(cache), str(n)], check=True,
                              capture_output=True, text=True)
        kb, from_cache = json.loads(node.stdout.strip().splitlines()[-1])
        assert from_cache, "the node recompiled instead of loading from the cache"
        report[f"kb_per_1000_{mode}_node"] = kb
    report["kb_per_1000"] = report["kb_per_1000_batch_node"]
    return report


def p3(tmp: Path, patterns: int) -> dict[str, Any]:
    one, count = prewarm(1, patterns // 2, 3, tmp / "p3-one")
    two, _ = prewarm(2, patterns // 2, 3, tmp / "p3-two")
    samples = hit_latency(1000, tmp / "p3-hits")
    (held_p50, held_p99), (unheld_p50, unheld_p99) = p50_p99_ms(samples["held"]), p50_p99_ms(samples["unheld"])
    return {"artifacts": count, "one_worker_s": one, "two_workers_s": two, "speedup": one / two,
            "shared_hit_p50_ms": held_p50, "shared_hit_p99_ms": held_p99,  # a node holding the artifacts (goal 5)
            "shared_hit_unheld_p50_ms": unheld_p50, "shared_hit_unheld_p99_ms": unheld_p99}


TARGETS = [
    ("P1 staged single-rule compile (median ms)", lambda r: r["P1"]["staged"]["median_ms"], "<=", 150),
    ("P1 in-process (.so, ld.lld) vs staged, whole request (x)", lambda r: r["P1"]["inprocess_speedup"], ">=", 10),
    ("P1 in-process in-memory (no linker) vs staged (x)", lambda r: r["P1"]["in_memory_speedup"], ">=", 10),
    ("P1 1000-rule batch vs one-at-a-time staged, per rule (x)", lambda r: r["P1"]["batch_vs_one_at_a_time_staged"],
     ">=", 50),
    ("P2 in-process LRU hit (median us)", lambda r: r["P2"]["lru_hit_median_us"], "<=", 20),
    ("P2 shared hit p99, node holding the artifact (ms)", lambda r: r["P3"]["shared_hit_p99_ms"], "<=", 5),
    ("P3 two workers vs one, pre-warm throughput (x)", lambda r: r["P3"]["speedup"], ">=", 1.8),
    ("P4 native vs interpreter (x)", lambda r: r["P4"]["native_vs_interpreter_end_to_end"], ">=", 100),
    ("P4 1000-rule vs 10-rule native throughput (x)", lambda r: r["P4"]["ratio_1000_vs_10"], ">=", 0.5),
    ("P5 resident KB per 1000 cached functions (batched)", lambda r: r["P5"]["kb_per_1000"], "<=", 2048),
    ("J1 warm `farm rewrite` in a new process vs the whole `maude` process (x)", lambda r: r["J1"]["ratio"], "<=",
     3),
    ("J1 the same through a running `farm server` vs the whole `maude` process (x)",
     lambda r: r["J1"]["server_ratio"], "<=", 3),
    ("J2 first native result for arith.farm, compile latency, tiered (ms)", lambda r: r["J2"]["arith_tiered_ms"],
     "<=", 50),
    ("J2 the same with a compile worker started up, as a `farm server` keeps one (ms)",
     lambda r: r["J2"]["arith_tiered_with_worker_ms"], "<=", 50),
    ("J2 cold single rule in memory, tiered (ms)", lambda r: r["J2"]["single_rule_tiered_ms"], "<=", 10),
    ("J2 1000 generated rules cold to loaded code, tiered (s)", lambda r: r["J2"]["rules_1000_tiered_s"], "<=", 2),
]


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# farm benchmark report ({report['when']}, {report['machine']})", "",
             "| target | measured | goal | met |", "|---|---|---|---|"]
    for name, get, op, goal in TARGETS:
        try:
            value = get(report)
        except KeyError:  # its section was left out (--only); the shared hit row reads P3's figures
            continue
        met = value <= goal if op == "<=" else value >= goal
        lines.append(f"| {name} | {value:,.2f} | {op} {goal} | {'yes' if met else 'NO'} |")
    lines += ["", "## Details", "", "```json", json.dumps({k: v for k, v in report.items() if k.startswith("P")},
                                                          indent=2), "```", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    scaling = report["P4"]["scaling"]
    sizes = sorted(int(k) for k in scaling)
    left.plot(sizes, [scaling[s]["in_library_nodes_per_s"] / 1e6 for s in sizes], marker="o")
    left.set_xscale("log")
    left.set_xlabel("rules in the ruleset")
    left.set_ylabel("native Mnodes/s")
    left.set_title("P4: matching cost vs ruleset size")
    p3_ = report["P3"]
    throughput = [p3_["artifacts"] / p3_["one_worker_s"], p3_["artifacts"] / p3_["two_workers_s"]]
    right.bar(["1 worker", "2 workers"], throughput)
    right.set_ylabel("artifacts/s")
    right.set_title("P3: pre-warm throughput")
    fig.tight_layout()
    fig.savefig(out)
    return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench-out"))
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--patterns", type=int, default=500, help="P3: artifacts to pre-warm (half per target)")
    parser.add_argument("--functions", type=int, default=1000, help="P5: compiled functions to cache")
    parser.add_argument("--only", help="comma-separated sections to run (P1,P2,P3,P4,P5,J1,J2,vs_maude); default all")
    parser.add_argument("--before", default="", help="J1: git ref of the code before (default: the fork point from "
                                                     "main, or main's parent on main); 'none' to skip")
    parser.add_argument("--p5-node", nargs=3, metavar=("MODE", "CACHE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.p5_node:  # the fresh node process of P5
        mode, cache, count = args.p5_node
        print(json.dumps(p5_load(mode, Path(cache), int(count))))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M"),
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("P1", lambda: p1(tmp, args.repeat)), ("P2", lambda: p2(tmp)), ("P4", lambda: p4(tmp)),
            ("P5", lambda: p5(tmp, args.functions)), ("P3", lambda: p3(tmp, args.patterns)),
            ("J1", lambda: startup.measure(tmp, args.repeat, None if args.before == "none" else args.before)),
            ("J2", lambda: tiered.measure(tmp)),
            ("vs_maude", maude.compare)]
        only = set(args.only.split(",")) if args.only else {name for name, _ in sections}
        for name, run in sections:
            if name not in only:
                continue
            start = time.perf_counter()
            report[name] = run()
            print(f"{name} done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    if "J1" in report:
        text += "\n\n## J1: warm `farm rewrite` against the whole `maude` process (same run)\n\n" + \
            startup.markdown(report["J1"])
    if "J2" in report:
        text += "\n\n## J2: first native result of a ruleset with no library, tiered and not (same run)\n\n" + \
            tiered.markdown(report["J2"])
    if "vs_maude" in report:
        text += "\n\n## farm vs Maude (same run)\n\n" + maude.markdown(report["vs_maude"])
    (out / "report.md").write_text(text + "\n")
    plotted = "P3" in report and "P4" in report and plot(report, out / "scaling.png")
    print(text)
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}" + (f", {out / 'scaling.png'}" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
