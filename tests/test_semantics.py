"""Interpreter semantics, checked against hand-computed answers and the naive oracle."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import farm.semantics.interp
from farm.errors import CallsTooDeep, FuelExhausted, RewriteCycle, RuleError
from farm.lang.rules import TopologicalPattern
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet, transduce_patterns
from farm.runtime.verify import differential
from farm.semantics import arith
from farm.semantics.callgraph import memoised_ops, tracked_ops
from farm.semantics.interp import Interpreter, RewriteResult
from farm.semantics.oracle import Oracle, from_graph, to_text

from .conftest import ruleset_of
from .test_differential import rule


def normalize(ruleset: RuleSet, text: str, fuel: int = 10_000) -> tuple[list[str], list[int]]:
    result = rewrite(ruleset, text, fuel)
    return result.texts(), result.firings


def rewrite(ruleset: RuleSet, text: str, fuel: int = 10_000) -> RewriteResult:
    g = TermGraph(ruleset.make_signature())
    return Interpreter(ruleset).rewrite(g, g.parse(text), fuel)


def test_first_matching_rule_in_priority_then_registration_order() -> None:
    rs = ruleset_of("""rule generic: (f ?x) => generic
                       rule specific [priority 5]: (f 1) => specific
                       rule later: (f 2) => later""")
    assert [r.name for r in rs.rules] == ["specific", "generic", "later"]
    assert normalize(rs, "(f 1) (f 2)")[0] == ["specific", "generic"]


def test_shadowed_duplicate_and_overlap_warnings() -> None:
    rs = ruleset_of("""rule a: (f ?x) => ?x
                       rule b: (f 1) => 2
                       rule c: (g ?x 1) => ?x
                       rule d: (g 1 ?y) => ?y
                       rule e: (g ?x 1) => ?x""")
    kinds = {(w.kind, w.first, w.second) for w in rs.warnings}
    assert ("shadowed", "a", "b") in kinds
    assert ("overlap", "c", "d") in kinds
    assert ("duplicate", "c", "e") in kinds


def test_nonlinear_patterns_compare_subterms() -> None:
    rs = ruleset_of("rule same: (eq ?x ?x) => true\nrule diff: (eq ?x ?y) => false")
    assert normalize(rs, "(eq (f a) (f a)) (eq (f a) (f b))")[0] == ["true", "false"]


def test_computed_literals_wrap_and_truncate() -> None:
    rs = ruleset_of("""rule add: (add ?a ?b) => {?a + ?b}
                       rule div: (div ?a ?b) if ?b != 0, ?b != -1 => {?a / ?b}
                       rule mod: (mod ?a ?b) if ?b > 0 => {?a % ?b}
                       rule shl: (shl ?a ?b) => {?a << ?b}
                       rule shr: (shr ?a ?b) => {?a >> ?b}""")
    texts, _ = normalize(rs, "(add 9223372036854775807 1) (div -7 2) (mod -7 3) (shl 1 65) (shr -8 1) "
                             "(div 1 0) (add x 1)")
    assert texts == ["-9223372036854775808", "-3", "-1", "2", "-4", "(div 1 0)", "(add x 1)"]
    assert arith("/", -(2**63), 1) == -(2**63)


def test_ordering_guards_hold_only_between_literals() -> None:
    rs = ruleset_of("rule pos: (p ?x) if ?x > 0 => yes\n"
                    "rule eq: (q ?x) if ?x == 0 => zero\n"
                    "rule ne: (r ?x) if ?x != 0 => nz")
    assert normalize(rs, "(p 3) (p -3) (p x) (q 0) (q x) (r x) (r 0)")[0] == ["yes", "(p -3)", "(p x)", "zero",
                                                                          "(q x)", "nz", "(r 0)"]


def test_conditional_rewriting_normalises_both_sides() -> None:
    rs = ruleset_of("""rule even0: (even 0) => true
                       rule even1: (even (s 0)) => false
                       rule even: (even (s (s ?n))) => (even ?n)
                       rule half: (half ?n) if (even ?n) = true => (h ?n)
                       rule odd: (odd ?n) if (even ?n) <> true => yes""")
    texts, firings = normalize(rs, "(half (s (s 0))) (half (s 0)) (odd (s 0)) (odd 0)")
    assert texts == ["(h (s (s 0)))", "(half (s 0))", "yes", "(odd 0)"]
    assert sum(firings) > 0


def test_bidirectional_pair_is_a_cycle_error_not_a_hang() -> None:
    rs = ruleset_of("rule swap [bidirectional]: (f a) => (f b)")
    g = TermGraph(rs.make_signature())
    result = Interpreter(rs).rewrite(g, g.parse("(f a) (g c)"), fuel=1000)
    assert isinstance(result.outcomes[0], RewriteCycle)
    assert result.graph.to_text(result.outcomes[1]) == "(g c)"
    with pytest.raises(FuelExhausted):
        Oracle(rs, fuel=1000).normalize(from_graph(g, g.parse("(f a)")[0]))


def test_growing_term_exhausts_fuel() -> None:
    rs = ruleset_of("rule grow: (f ?x) => (f (s ?x))")
    g = TermGraph(rs.make_signature())
    result = Interpreter(rs).rewrite(g, g.parse("(f 0)"), fuel=50)
    assert isinstance(result.outcomes[0], FuelExhausted) and "fuel budget of 50" in str(result.outcomes[0])
    assert result.firings == [51]


def test_memo_agrees_with_oracle_on_shared_subterms() -> None:
    rs = ruleset_of("rule d: (d ?x) => (p ?x ?x)\nrule p: (p (s ?x) ?y) => (s (p ?x ?y))\nrule p0: (p 0 ?y) => ?y")
    g = TermGraph(rs.make_signature())
    (root,) = g.parse("(d (d (d (s (s 0)))))")
    result = Interpreter(rs).rewrite(g, [root])
    assert g.to_text(result.outcomes[0]) == to_text(Oracle(rs).normalize(from_graph(g, root)))


def test_deep_term_normalises_without_recursion() -> None:
    rs = ruleset_of("rule plus0: (plus 0 ?y) => ?y\nrule plusS: (plus (s ?x) ?y) => (s (plus ?x ?y))")
    depth = 20_000
    g = TermGraph(rs.make_signature())
    (root,) = g.parse("(plus " + "(s " * depth + "0" + ")" * depth + " 0)")
    result = Interpreter(rs).rewrite(g, [root])
    assert g.depth(result.outcomes[0]) == depth + 1
    assert result.firings == [1, depth]


# ---- rewriting compiled as calls (docs/rules.md, "Semantics") ------------------------------------------------

FIB = """rule fib0: (fib 0) => 0
         rule fib1: (fib 1) => 1
         rule fib: (fib ?n) if ?n > 1 => (add (fib {?n - 1}) (fib {?n - 2}))
         rule add: (add ?a ?b) => {?a + ?b}"""


def test_memoised_calls_repeat_without_steps() -> None:
    """fib is memoised: each fib(k) fires once (fib and add: two steps for k > 1), so fib(n) takes 2n steps,
    not exponentially many; the memo outlives a root, so a later root's fib(24) is a hit and takes none."""
    rs = ruleset_of(FIB)
    assert memoised_ops(rs) == {"fib"}
    result = rewrite(rs, "(fib 25) (fib 24) (fib 26)")
    assert result.texts() == ["75025", "46368", "121393"]
    assert result.steps == [50, 0, 2]
    assert result.firings == [1, 1, 25, 25]
    term = from_graph(result.graph, result.graph.parse("(fib 12)")[0])
    assert to_text(Oracle(rs).normalize(term)) == "144"


PLUS = "rule plus0: (plus 0 ?y) => ?y\nrule plusS: (plus (s ?x) ?y) => (s (plus ?x ?y))\n"


def test_structural_recursion_is_not_memoised() -> None:
    """plus recurses structurally: its calls are not remembered, so the same call made by two rules costs
    its steps twice (1 + 1 + 3, then 1 + 3)."""
    rs = ruleset_of(PLUS + """rule twice: (twice ?x ?y) => (pair (p1 ?x ?y) (p2 ?x ?y))
                              rule p1: (p1 ?x ?y) => (plus ?x ?y)
                              rule p2: (p2 ?x ?y) => (plus ?x ?y)""")
    assert memoised_ops(rs) == frozenset()
    result = rewrite(rs, "(twice (s (s 0)) (s 0))")
    assert result.texts() == ["(pair (s (s (s 0))) (s (s (s 0))))"]
    assert result.steps == [9]
    assert result.firings == [2, 4, 1, 1, 1]


def test_recursion_on_a_shrinking_argument_is_not_tracked() -> None:
    """len with an accumulator and range counting down walk a strict part of one argument on every call
    (the other grows): they cannot loop, so they are not tracked. dv_sz passes its first argument back
    whole: dv may loop, and does on (dv (s z) z z)."""
    rs = ruleset_of("""rule len0: (len nil ?n) => ?n
                       rule len1: (len (cons ?x ?xs) ?n) => (len ?xs (s ?n))
                       rule r0: (range ?i z) => nil
                       rule r1: (range ?i (s ?k)) => (cons ?i (range (s ?i) ?k))
                       rule dv_sz: (dv (s ?x) z ?p) => (dv (s ?x) ?p ?p)
                       rule dv_ss: (dv (s ?x) (s ?k) ?p) => (dv ?x ?k ?p)
                       rule dv_zz: (dv z z ?p) => true""")
    assert tracked_ops(rs) == {"dv"} and not memoised_ops(rs)
    result = rewrite(rs, "(len (range z (s (s (s z)))) z) (dv (s (s z)) (s z) (s z)) (dv (s z) z z)", fuel=100)
    assert result.texts()[:2] == ["(s (s (s z)))", "true"]
    assert isinstance(result.outcomes[2], RewriteCycle)


def test_a_rule_evaluates_each_distinct_subexpression_once() -> None:
    """`(f ?x)` appears in the condition and twice in the target: it is called once."""
    rs = ruleset_of("""rule g: (g ?x) if (f ?x) = true => (h (f ?x) (f ?x))
                       rule f: (f ?x) => true""")
    result = rewrite(rs, "(g a)")
    assert result.texts() == ["(h true true)"]
    assert result.steps == [2] and result.firings == [1, 1]


def test_a_tracked_call_in_progress_is_a_cycle_and_the_next_root_starts_clean() -> None:
    """f(a) calls f(b) calls f(a), still in progress: a RewriteCycle after two steps. The calls in progress
    are dropped with the error, so the next root meets the same cycle from the other side, not a stale entry."""
    rs = ruleset_of("rule swap [bidirectional]: (f a) => (f b)")
    assert tracked_ops(rs) == {"f"} and not memoised_ops(rs)
    result = rewrite(rs, "(f a) (f b) (g (f a))", fuel=1000)
    assert all(isinstance(o, RewriteCycle) for o in result.outcomes[:2])
    assert "after 2 steps" in str(result.outcomes[0]) and "swap~rev" in str(result.outcomes[0])
    assert isinstance(result.outcomes[2], RewriteCycle)
    assert result.steps == [2, 2, 2] and result.firings == [3, 3]


def test_fuel_counts_steps_across_nested_calls() -> None:
    """(g ?x) => (g (s ?x)) calls itself on ever larger arguments: no cycle, the fuel runs out after fuel + 1
    firings; the calls in progress are dropped, so the same term fails the same way again, and a term
    without a redex is unaffected."""
    rs = ruleset_of("rule grow: (g ?x) => (g (s ?x))")
    result = rewrite(rs, "(g 0) (h (g 0)) (h 1)", fuel=100)
    for outcome in result.outcomes[:2]:
        assert isinstance(outcome, FuelExhausted) and "fuel budget of 100" in str(outcome)
        assert "'grow'" in str(outcome)
    assert result.texts()[2] == "(h 1)"
    assert result.steps == [101, 101, 0] and result.firings == [202]


def test_calls_nested_past_the_bound_are_too_deep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(farm.semantics.interp, "MAX_CALL_DEPTH", 100)
    rs = ruleset_of(PLUS)

    def plus(depth: int) -> str:
        return "(plus " + "(s " * depth + "0" + ")" * depth + " 0)"

    result = rewrite(rs, f"{plus(99)} {plus(100)} (plus (s 0) 0)")
    assert result.graph.depth(result.outcomes[0]) == 100  # 99 plusS calls and plus0's: 100 deep
    assert isinstance(result.outcomes[1], CallsTooDeep) and "'plusS'" in str(result.outcomes[1])
    assert result.outcomes[1].steps == 100
    assert result.texts()[2] == "(s 0)"
    assert result.steps == [100, 100, 2]


def test_a_full_memo_drops_its_finished_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for 3 calls: (f 3) finds the memo full of finished entries and drops them, then fills it with
    f(3), f(2), f(1) in progress, so f(0) is not remembered; later repeats cost their steps again."""
    rules = """rule f0: (f 0) => 0
               rule f: (f ?n) if ?n > 0 => (f {?n - 1})
               rule g: (g ?n) => (f ?n)
               rule split: (f (pair ?a ?b)) => (e (f ?a) (f ?b))"""  # never fires; makes f memoised
    rs = ruleset_of(rules)
    assert memoised_ops(rs) == {"f"}
    terms = "(f 1) (f 2) (f 3) (g 0) (g 3)"
    assert rewrite(rs, terms).steps == [2, 1, 1, 1, 1]
    monkeypatch.setattr(farm.semantics.interp, "MAX_MEMO_ENTRIES", 3)
    result = rewrite(rs, terms)
    assert result.texts() == ["0"] * 5
    assert result.steps == [2, 1, 4, 2, 5]


def test_a_call_a_million_levels_deep() -> None:
    """`(plus s^1000000(0) (s 0))` nests a million calls: on the interpreter's own stack, not Python's (whose
    default recursion limit is restored for the run: conftest raises it)."""
    depth = 1_000_000
    rs = ruleset_of(PLUS)
    g = TermGraph(rs.make_signature())
    (root,) = g.parse("(plus " + "(s " * depth + "0" + ")" * depth + " (s 0))")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        started = time.monotonic()
        result = Interpreter(rs).rewrite(g, [root], max_memory=0)
        assert time.monotonic() - started < 60
    finally:
        sys.setrecursionlimit(limit)
    assert result.firings == [1, depth] and result.steps == [depth + 1]
    assert g.depth(result.outcomes[0]) == depth + 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(rule(), min_size=1, max_size=7), st.integers(0, 2**32))
def test_interpreter_equals_oracle(patterns: list[TopologicalPattern], seed: int) -> None:
    """Memo, sharing and calls change the steps taken, never a normal form (the oracle has none of them)."""
    try:
        ruleset = transduce_patterns(patterns, warn=False)
    except RuleError:
        assume(False)
        return
    report = differential(ruleset, None, cases=60, seed=seed, fuel=200)
    assert report.ok, "\n".join(report.mismatches[:5]) + "\nrules:\n" + "\n".join(map(str, ruleset.rules))


def test_the_oracle_compares_terms_that_share_subterms_once_per_pair() -> None:
    """A right-hand side that uses a variable twice makes the oracle's term refer to one tuple twice: 60 doublings
    are a tree of 2^60 nodes. Comparing two such terms built apart (a non-linear pattern, an == guard) visits each
    pair of tuples once; as trees, it never ended. In a process of its own, so that a regression fails on the
    timeout rather than hang the suite."""
    check = """
from farm.semantics.oracle import same
def doubled(times, leaf):
    term = leaf
    for _ in range(times):
        term = ("c", term, term)
    return term
assert same(doubled(60, ("z",)), doubled(60, ("z",)))
assert not same(doubled(60, ("z",)), doubled(60, ("y",)))
assert not same(("c", doubled(59, ("z",)), doubled(59, ("z",))), ("c", doubled(59, ("z",)), ("d",)))
print("compared")
"""
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False)
    assert run.stdout.strip() == "compared", run.stderr[-2000:]
