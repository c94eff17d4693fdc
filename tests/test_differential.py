"""Property tests: random rulesets and random terms, native == interpreter == oracle.

Rulesets mix non-linear patterns, literal patterns, guards of every kind, computed literals, conditions,
priorities and bidirectional rules (which loop: both engines must report the same error).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from farm.cache.engine import Engine, load_native
from farm.errors import RuleError
from farm.lang.rules import (
    App,
    BinOp,
    Compare,
    Computed,
    IsConst,
    Lit,
    PatternExpr,
    Polarity,
    TermCondition,
    TopologicalPattern,
    Var,
    variables,
)
from farm.lang.transduce import transduce_patterns
from farm.runtime.verify import differential

SIGNATURE = {"f": 2, "g": 1, "h": 2, "a": 0, "b": 0}
VARS = ["x", "y", "z"]
_names = itertools.count()


def source_pattern(depth: int = 2) -> st.SearchStrategy[PatternExpr]:
    leaf = st.one_of(st.sampled_from([Var(v) for v in VARS]), st.sampled_from([Lit(0), Lit(1), Lit(2)]),
                     st.sampled_from([App("a"), App("b")]))
    if depth == 0:
        return leaf
    sub = source_pattern(depth - 1)
    return st.one_of(leaf, st.builds(lambda s: App("g", (s,)), sub),
                     st.builds(lambda op, left, right: App(op, (left, right)), st.sampled_from(["f", "h"]), sub, sub))


@st.composite
def root_pattern(draw: st.DrawFn) -> App:
    op = draw(st.sampled_from(["f", "g", "h"]))
    return App(op, tuple(draw(source_pattern(1)) for _ in range(SIGNATURE[op])))


@st.composite
def target_pattern(draw: st.DrawFn, bound: list[str], depth: int = 2) -> PatternExpr:
    choices = ["lit", "const", "app"] + (["var", "var", "computed"] if bound else [])
    kind = draw(st.sampled_from(choices if depth else [c for c in choices if c != "app"]))
    if kind == "var":
        return Var(draw(st.sampled_from(bound)))
    if kind == "lit":
        return Lit(draw(st.integers(-3, 3)))
    if kind == "const":
        return App(draw(st.sampled_from(["a", "b"])))
    if kind == "computed":
        op = draw(st.sampled_from(["+", "-", "*", "&", "|", "^", "<<", ">>"]))
        left = Var(draw(st.sampled_from(bound)))
        right = draw(st.one_of(st.builds(Lit, st.integers(-2, 70)), st.sampled_from([Var(v) for v in bound])))
        return Computed(BinOp(op, left, right))
    op = draw(st.sampled_from(["f", "g", "h"]))
    return App(op, tuple(draw(target_pattern(bound, depth - 1)) for _ in range(SIGNATURE[op])))


@st.composite
def guard(draw: st.DrawFn, bound: list[str]):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["const", "cmp", "eq", "cond"]))
    v = Var(draw(st.sampled_from(bound)))
    if kind == "const":
        return IsConst(v)
    if kind == "cmp":
        return Compare(draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="])), v, Lit(draw(st.integers(-1, 2))))
    if kind == "eq":
        return Compare(draw(st.sampled_from(["==", "!="])), v, Var(draw(st.sampled_from(bound))))
    return TermCondition(App("g", (v,)), draw(target_pattern(bound, 1)), draw(st.booleans()))


@st.composite
def rule(draw: st.DrawFn) -> TopologicalPattern:
    source = draw(root_pattern())
    bound = sorted(set(variables(source)))
    target = draw(target_pattern(bound))
    guards = tuple(draw(st.lists(guard(bound), max_size=2))) if bound else ()
    polarity = draw(st.sampled_from([Polarity.FORWARD] * 6 + [Polarity.BIDIRECTIONAL, Polarity.BACKWARD]))
    if polarity is not Polarity.FORWARD and (not isinstance(target, App) or set(variables(target)) != set(bound)
                                             or any(isinstance(e, Computed) for e in [target])):
        polarity = Polarity.FORWARD
    return TopologicalPattern(f"r{next(_names)}", source, target, guards, polarity, draw(st.integers(0, 2)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(rule(), min_size=1, max_size=7), st.integers(0, 2**32))
def test_native_equals_interpreter_equals_oracle(session_engine: Engine, patterns: list[TopologicalPattern],
                                                 seed: int) -> None:
    try:
        ruleset = transduce_patterns(patterns, warn=False)
    except RuleError:
        assume(False)
        return
    artifact = session_engine.compile(ruleset, f"hypothesis-{ruleset.fingerprint()[:16]}", opt_level=0)
    report = differential(ruleset, load_native(ruleset, artifact), cases=60, seed=seed, fuel=200)
    assert report.ok, "\n".join(report.mismatches[:5]) + "\nrules:\n" + "\n".join(map(str, ruleset.rules))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(rule(), min_size=1, max_size=7), st.integers(0, 2**32))
def test_tier_0s_quick_code_equals_interpreter_equals_oracle(session_engine: Engine, patterns: list[TopologicalPattern],
                                                             seed: int) -> None:
    """Tier 0's code (in memory at -O0: quick modules, irbuild.quick) calls through tables, tests cases one by one and
    counts firings and interns through the runtime: the same normal forms, outcomes and counts as the interpreter."""
    try:
        ruleset = transduce_patterns(patterns, warn=False)
    except RuleError:
        assume(False)
        return
    native = session_engine.load_in_memory(ruleset, opt_level=0)
    report = differential(ruleset, native, cases=60, seed=seed, fuel=200)
    assert report.ok, "\n".join(report.mismatches[:5]) + "\nrules:\n" + "\n".join(map(str, ruleset.rules))
