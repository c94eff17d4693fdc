"""The Rust and OpenQASM 3 text targets, checked by their real tools."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from farm.compiler.codegen.qasm import generate_qasm
from farm.compiler.codegen.rust import generate_rust, harness_input, harness_output, harness_steps
from farm.compiler.matchtree import NODE_BUDGET
from farm.errors import CodegenError, NonTermination
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet
from farm.runtime.verify import TermGenerator
from farm.semantics import MAX_CALL_DEPTH, MAX_MEMO_ENTRIES
from farm.semantics.callgraph import memoised_ops, tracked_ops
from farm.semantics.interp import Interpreter

from .conftest import EXAMPLES, ruleset_of
from .test_native import example

RUSTC = shutil.which("rustc") or str(Path.home() / ".cargo/bin/rustc")

# Rewriting as calls (docs/rules.md, "Semantics"): structural recursion (plus), a memoised operator (fib), a
# condition whose call the target reuses (twice), a bidirectional pair (swap, tracked), a tracked operator that
# never stops (spin), nested conditions (deep) and a constructor-only target.
CALLS = """
rule plus_z: (plus z ?y) => ?y
rule plus_s: (plus (s ?x) ?y) => (s (plus ?x ?y))
rule fib_z: (fib z) => z
rule fib_1: (fib (s z)) => (s z)
rule fib_n: (fib (s (s ?n))) => (plus (fib (s ?n)) (fib ?n))
rule twice: (g ?x) if (h ?x) = t => (k (h ?x) (h ?x))
rule h_t: (h ?x) => t
rule swap [bidirectional]: (f a) => (f b)
rule spin: (spin ?x) => (spin (s ?x))
rule deep_z: (deep z) => t
rule deep_s: (deep (s ?x)) => t if (deep ?x) = t
rule wrap: (w ?x ?x) => (k ?x (s ?x))
"""


def peano(n: int, inner: str = "z") -> str:
    return "(s " * n + inner + ")" * n


def rust_binary(ruleset: RuleSet, tmp_path: Path, tree_budget: int = NODE_BUDGET) -> Path:
    if not Path(RUSTC).exists():
        pytest.skip("rustc is not installed")
    source = tmp_path / "rules.rs"
    source.write_text(generate_rust(ruleset, with_main=True, tree_budget=tree_budget))
    binary = tmp_path / "rules"
    proc = subprocess.run([RUSTC, "-O", "--edition", "2021", "-o", str(binary), str(source)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return binary


def run_rust(binary: Path, ruleset: RuleSet, text: str, fuel: int) -> tuple[list[str], list[int], list[int]]:
    """Normal forms (errors as `error <name>`), firing counts and steps per root of the Rust rewriter."""
    graph = TermGraph(ruleset.make_signature())
    roots = graph.parse(text)
    proc = subprocess.run([str(binary)], input=harness_input(ruleset, graph, roots, fuel), capture_output=True,
                          text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results, counters = harness_output(ruleset, graph, proc.stdout)
    named = [f"error {r.split()[2]}" if r.startswith("error ") else r for r in results]
    return named, counters, harness_steps(proc.stdout)


def run_interpreter(ruleset: RuleSet, text: str, fuel: int) -> tuple[list[str], list[int], list[int]]:
    g = TermGraph(ruleset.make_signature())
    result = Interpreter(ruleset).rewrite(g, g.parse(text), fuel)
    texts = [f"error {type(o).__name__}" if isinstance(o, NonTermination) else g.to_text(o) for o in result.outcomes]
    return texts, result.firings, result.steps


def sample_terms(ruleset: RuleSet, sample: str, count: int) -> str:
    gen = TermGenerator(ruleset, random.Random(5))
    g = TermGraph(ruleset.make_signature())
    roots = g.parse(sample) + [gen.term(g) for _ in range(count)]
    return " ".join(g.to_text(r) for r in roots)


CALLS_SAMPLE = f"""(plus {peano(3)} (s z)) (fib {peano(10)}) (g q) (f a) (f b) (k x y) (spin z) (w a a) (w a b)
                   (deep {peano(20)}) (plus (fib {peano(4)}) (fib {peano(5)})) (fib (plus {peano(3)} {peano(4)}))"""


@pytest.mark.parametrize("name, budget", [("arith", NODE_BUDGET), ("bool", NODE_BUDGET), ("arith", 3),
                                          ("calls", NODE_BUDGET), ("calls", 2)])
def test_rust_target_compiles_and_rewrites_like_the_interpreter(tmp_path: Path, name: str, budget: int) -> None:
    """Normal forms, errors, firing counts and steps per root, on the samples and 300 random terms."""
    ruleset = ruleset_of(CALLS) if name == "calls" else example(name)
    binary = rust_binary(ruleset, tmp_path, budget)
    sample = CALLS_SAMPLE if name == "calls" else (EXAMPLES / f"{name}.terms").read_text()
    text = sample_terms(ruleset, sample, 300)
    rust = run_rust(binary, ruleset, text, 10_000)
    assert rust == run_interpreter(ruleset, text, 10_000) and sum(rust[1]) > 0


def test_rust_target_follows_the_call_semantics(tmp_path: Path) -> None:
    """Steps as docs/rules.md counts them, independently of the interpreter: a structural call per `s`, fib
    memoised (linear), a condition's call reused by the target, a cycle and fuel each ending only their root."""
    ruleset = ruleset_of(CALLS)
    binary = rust_binary(ruleset, tmp_path)
    results, counters, steps = run_rust(binary, ruleset, f"(plus {peano(2)} (s z)) (fib {peano(10)}) (g q) (f a) "
                                                         "(k x y) (spin z) (w a a)", 200)
    assert results == [peano(3), peano(55), "(k t t)", "error RewriteCycle", "(k x y)", "error FuelExhausted",
                       "(k a (s a))"]
    # fib: 11 fib steps; plus(fib(n-1), fib(n-2)) takes fib(n-1) + 1 steps for n = 2..10, 88 + 9 in all
    assert steps == [3, 11 + 97, 2, 2, 0, 201, 1]
    assert counters[ruleset.rules[[r.name for r in ruleset.rules].index("h_t")].index] == 1


def test_rust_target_reports_cycles(tmp_path: Path) -> None:
    ruleset = ruleset_of("rule swap [bidirectional]: (f a) => (f b)")
    binary = rust_binary(ruleset, tmp_path)
    g = TermGraph(ruleset.make_signature())
    roots = g.parse("(f a) (g b)")
    proc = subprocess.run([str(binary)], input=harness_input(ruleset, g, roots, 100), capture_output=True,
                          text=True, check=True)
    results, _ = harness_output(ruleset, g, proc.stdout)
    assert results[0].startswith("error -3 RewriteCycle ") and results[1] == "(g b)"


def test_rust_target_drops_finished_memo_entries_when_full(tmp_path: Path) -> None:
    """`d` is memoised (two calls per rule; `e` joins them, two steps a level): n + 1 calls fill the memo; the
    next root's first call finds it full, drops the finished entries, and so pays every step again."""
    ruleset = ruleset_of("rule d_z: (d z) => z\nrule d_s: (d (s ?x)) => (e (d ?x) (d ?x))\nrule e: (e ?a ?a) => ?a")
    binary = rust_binary(ruleset, tmp_path)
    n = MAX_MEMO_ENTRIES + 10
    results, _, steps = run_rust(binary, ruleset, f"(d {peano(n)}) (d {peano(n)}) (d {peano(n + 1)})", 10_000_000)
    assert results == ["z"] * 3 and steps == [2 * n + 1, 0, 2 * n + 3]


def test_rust_target_does_not_remember_calls_when_every_entry_is_in_progress(tmp_path: Path) -> None:
    """(c n) nests n + 1 memoised calls (`split`, which never fires here, makes `c` memoised): past
    MAX_MEMO_ENTRIES of them in progress, a call is not remembered, so the loop c(0) -> c(1) -> c(0) at the
    bottom is not seen as a cycle and spends the fuel; (c 3), whose calls are all remembered, is a
    RewriteCycle."""
    ruleset = ruleset_of("""rule down: (c ?n) if ?n > 0 => (c {?n - 1})
                            rule up: (c 0) => (c 1)
                            rule split: (c (pair ?a ?b)) => (e (c ?a) (c ?b))""")
    assert memoised_ops(ruleset) == {"c"}
    binary = rust_binary(ruleset, tmp_path)
    n = MAX_MEMO_ENTRIES + 5
    results, counters, steps = run_rust(binary, ruleset, f"(c {n}) (c 3)", n + 1000)
    assert results == ["error FuelExhausted", "error RewriteCycle"] and steps == [n + 1001, 4]
    assert counters == [n + 500 + 3, 501 + 1, 0]  # the loop alternates up, down, .. for 1,001 steps


def test_rust_target_tracks_calls_in_progress_without_remembering_them(tmp_path: Path) -> None:
    """`range` and the pair f, g are tracked, not memoised: `two` calls (range 3) twice, and the second call
    costs its four steps again (1 + 4 + 4), as does a later root's (range 3); f(z) -> g(z) -> f(z) is a
    RewriteCycle after two steps, and so is a loop past what the memo would hold (h, 2^18 + 6 calls deep);
    each root's error forgets its tracked calls, so the same root again takes the same two steps."""
    ruleset = ruleset_of("""rule r_go: (range ?n) if ?n > 0 => (cons ?n (range {?n - 1}))
                            rule r_0: (range 0) => nil
                            rule two: (two ?n) => (pair (range ?n) (range {?n + 0}))
                            rule a: (f ?x) => (g ?x)
                            rule b: (g ?x) => (f ?x)
                            rule down: (h ?n) if ?n > 0 => (h {?n - 1})
                            rule up: (h 0) => (h 1)""")
    assert tracked_ops(ruleset) == {"range", "f", "g", "h"} and not memoised_ops(ruleset)
    binary = rust_binary(ruleset, tmp_path)
    n = MAX_MEMO_ENTRIES + 5
    text = f"(two 3) (f z) (range 3) (f z) (h {n})"
    rust = run_rust(binary, ruleset, text, 10_000_000)
    listed = "(cons 3 (cons 2 (cons 1 nil)))"
    assert rust[0] == [f"(pair {listed} {listed})", "error RewriteCycle", listed, "error RewriteCycle",
                       "error RewriteCycle"]
    assert rust[2] == [9, 2, 4, 2, n + 1]
    assert rust == run_interpreter(ruleset, text, 10_000_000)


def test_rust_target_leaves_the_calls_on_a_shrinking_argument_untracked(tmp_path: Path) -> None:
    """dv_ss passes a part of dv's first argument: that call is not tracked, so a loop entered through it is
    caught one call later (3 steps, not 2), as the interpreter counts."""
    ruleset = ruleset_of("""rule dv_sz: (dv (s ?x) z ?p) => (dv (s ?x) ?p ?p)
                            rule dv_ss: (dv (s ?x) (s ?k) ?p) => (dv ?x ?k ?p)
                            rule dv_zz: (dv z z ?p) => true""")
    text = "(dv (s (s z)) (s z) z) (dv (s z) z z) (dv (s (s (s (s z)))) (s (s z)) (s (s z)))"
    rust = run_rust(rust_binary(ruleset, tmp_path), ruleset, text, 1000)
    assert rust[0] == ["error RewriteCycle", "error RewriteCycle", "true"] and rust[2] == [3, 1, 6]
    assert rust == run_interpreter(ruleset, text, 1000)


def test_rust_target_normalises_a_million_nested_calls(tmp_path: Path) -> None:
    """`plus` recurses structurally: (plus s^1000000(z) (s z)) nests a million calls on the rewriting
    thread's stack, takes a million and one steps, and prints the million-level result."""
    ruleset = ruleset_of("rule plus_z: (plus z ?y) => ?y\nrule plus_s: (plus (s ?x) ?y) => (s (plus ?x ?y))")
    binary = rust_binary(ruleset, tmp_path)
    n = 1_000_000
    results, counters, steps = run_rust(binary, ruleset, f"(plus {peano(n)} (s z)) (plus (s z) z)", 10_000_000)
    assert results == [peano(n + 1), "(s z)"] and steps == [n + 1, 2] and counters == [2, n + 1]


def test_rust_target_bounds_nested_calls(tmp_path: Path) -> None:
    """A memoised operator that recurses on ever larger arguments nests calls until MAX_CALL_DEPTH: the
    call past it ends the root with CallsTooDeep (not a stack overflow), and the next root still rewrites."""
    ruleset = ruleset_of("rule dive: (dive ?x) => (s (dive (s ?x)))")
    binary = rust_binary(ruleset, tmp_path)
    results, _, steps = run_rust(binary, ruleset, "(dive z) (s z)", 10_000_000)
    assert results == ["error CallsTooDeep", "(s z)"] and steps == [MAX_CALL_DEPTH, 0]


def test_qasm_target_emits_gate_pairs_the_reference_parser_accepts() -> None:
    ruleset = ruleset_of("""rule hh: (h (h ?q)) => ?q
                            rule xx: (x (x ?q)) => (id ?q)
                            rule hxh: (h (x (h ?q))) => (z ?q)
                            rule ss: (s (s ?q)) => (z ?q)""")
    text = generate_qasm(ruleset)
    assert "gate rule_0_source q { h q; h q; }" in text
    assert "gate rule_2_source q { h q; x q; h q; }" in text and "gate rule_2_target q { z q; }" in text
    openqasm3 = pytest.importorskip("openqasm3")
    program = openqasm3.parse(text)
    assert len([s for s in program.statements if type(s).__name__ == "QuantumGateDefinition"]) == 8


@pytest.mark.parametrize("rules, message", [
    ("rule a: (cx ?p ?q) => ?q", "outside the OpenQASM gate subset"),
    ("rule a: (h ?q) if const(?q) => ?q", "guards cannot be expressed"),
    ("rule a: (h 0) => 0", "must end in a wire variable"),
])
def test_qasm_target_refuses_rules_outside_the_subset(rules: str, message: str) -> None:
    with pytest.raises(CodegenError, match=message):
        generate_qasm(ruleset_of(rules))
