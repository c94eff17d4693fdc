"""Interpreter semantics, checked against hand-computed answers and the naive oracle."""

from __future__ import annotations

import pytest

from farm.errors import FuelExhausted, RewriteCycle
from farm.interp import Interpreter
from farm.oracle import Oracle, from_graph, to_text
from farm.semantics import arith
from farm.terms import TermGraph
from farm.transduce import RuleSet

from .conftest import ruleset_of


def normalize(ruleset: RuleSet, text: str, fuel: int = 10_000) -> tuple[list[str], list[int]]:
    g = TermGraph(ruleset.make_signature())
    result = Interpreter(ruleset).rewrite(g, g.parse(text), fuel)
    return result.texts(), result.firings


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
