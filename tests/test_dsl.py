from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.errors import ArityError, ParseError, RuleError, UnboundVariableError, UnknownOperatorError
from farm.lang.dsl import load_rules, parse_rules
from farm.lang.rules import App, Compare, Computed, IsConst, Lit, Polarity, TermCondition, TopologicalPattern, Var
from farm.lang.transduce import transduce_patterns

from .conftest import EXAMPLES, ruleset_of


def test_parses_rule_with_guards_priority_and_computed_literal() -> None:
    parsed = parse_rules("rule fold_add [priority 10]: (add ?a ?b) if const(?a), const(?b) => {?a + ?b}")
    (p,) = parsed.patterns
    assert p.name == "fold_add" and p.priority == 10 and p.polarity is Polarity.FORWARD
    assert p.source == App("add", (Var("a"), Var("b")))
    assert p.constraints == (IsConst(Var("a")), IsConst(Var("b")))
    assert isinstance(p.target, Computed)


def test_python_api_builds_the_same_objects_as_the_dsl() -> None:
    api = TopologicalPattern("add_zero", App("add", (Var("x"), Lit(0))), Var("x"))
    (parsed,) = parse_rules("rule add_zero: (add ?x 0) => ?x").patterns
    assert parsed == api


def test_arrows_set_polarity_and_guards_may_follow_the_target() -> None:
    text = """rule b: (f ?x) <= (g ?x)
              rule c: (f ?x) <=> (h ?x)
              rule d: (k ?x ?y) => ?x if ?x < 3, ?y == 2, (f ?x) = (h ?x), ?x <> ?y"""
    b, c, d = parse_rules(text).patterns
    assert b.polarity is Polarity.BACKWARD and c.polarity is Polarity.BIDIRECTIONAL
    assert d.constraints[0] == Compare("<", Var("x"), Lit(3))
    assert isinstance(d.constraints[2], TermCondition) and d.constraints[3] == TermCondition(Var("x"), Var("y"), False)


@pytest.mark.parametrize("text, line, column, fragment", [
    ("rule a: (add ?x 0) => ", 1, 23, "expected a pattern"),
    ("rule a: (add ?x 0)\n  -> ?x", 2, 3, "expected '=>'"),
    ("\n\nrule a [prio 3]: (f ?x) => ?x", 3, 9, "unknown rule attribute 'prio'"),
    ("rule a: (f ?x => ?x", 1, 15, "expected a pattern"),
    ("rule a: (f 99999999999999999999) => 0", 1, 12, "does not fit"),
    ("rule a: (f ?x) => {?x $ 2}", 1, 23, "unexpected character"),
    ("oops", 1, 1, "expected 'rule' or 'op'"),
])
def test_parse_errors_name_file_line_and_column(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_rules(text, "bad.farm")
    where = info.value.location
    assert (where.file, where.line, where.column) == ("bad.farm", line, column)
    assert fragment in str(info.value) and str(info.value).startswith(f"bad.farm:{line}:{column}: ")


def test_unknown_operator_when_operators_are_declared() -> None:
    with pytest.raises(UnknownOperatorError, match=r"x.farm:2:\d+: unknown operator 'mul'"):
        parse_rules("op add/2\nrule a: (add ?x 0) => (mul ?x 1)", "x.farm")


def test_declared_arity_clash_is_reported() -> None:
    with pytest.raises(ParseError, match="declared with arity 2, used here with 1"):
        parse_rules("op add/2\nrule a: (add ?x) => ?x")


def test_arity_clash_across_rules() -> None:
    with pytest.raises(ArityError, match="'add' is used with arity 3"):
        ruleset_of("rule a: (add ?x 0) => ?x\nrule b: (add ?x ?y ?z) => ?x")


def test_unbound_target_variable() -> None:
    with pytest.raises(UnboundVariableError, match=r"\?y is not bound"):
        ruleset_of("rule a: (f ?x) => ?y")


def test_backward_direction_must_bind_its_variables() -> None:
    with pytest.raises(UnboundVariableError, match="backward direction"):
        ruleset_of("rule a: (f ?x ?y) <=> (g ?x)")


def test_division_needs_guards() -> None:
    with pytest.raises(RuleError, match="excludes zero"):
        ruleset_of("rule d: (div ?a ?b) => {?a / ?b}")
    with pytest.raises(RuleError, match="overflow"):
        ruleset_of("rule d: (div ?a ?b) if ?b != 0 => {?a / ?b}")
    ruleset_of("rule d: (div ?a ?b) if ?b > 0 => {?a / ?b}")
    ruleset_of("rule d: (div ?a ?b) if ?b != 0, ?a != -9223372036854775808 => {?a % ?b}")


def test_every_example_parses() -> None:
    for path in EXAMPLES.glob("*.farm"):
        parsed = load_rules(path)
        transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


def test_non_utf8_file_is_a_parse_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "latin1.farm"
    path.write_bytes(b"rule \xe9: (f ?x) => ?x")
    with pytest.raises(ParseError, match="not UTF-8"):
        load_rules(path)




# ---- the overlap analysis: indexed by argument heads, equal to comparing every pair ----

def _every_pair(rules: tuple) -> list:  # type: ignore[type-arg]
    """The reference: every pair of one root operator compared, as the analysis did before its index."""
    from collections import defaultdict

    from farm.lang.transduce import _compare_pair

    groups: dict = defaultdict(list)  # type: ignore[type-arg]
    for rule in rules:
        groups[(rule.source.op, len(rule.source.args))].append(rule)
    return [w for group in groups.values() for i, a in enumerate(group) for b in group[i + 1:]
            if (w := _compare_pair(a, b))]


_ARG = st.sampled_from(["?x", "?y", "0", "1", "(s ?x)", "(s 0)", "(p ?x ?y)", "(p 0 ?y)", "(s (s ?x))", "(q)"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["f", "g"]), _ARG, _ARG, st.sampled_from(["", " [priority 2]"])),
                min_size=1, max_size=25))
def test_the_indexed_overlap_analysis_finds_what_every_pair_finds(rows: list[tuple[str, str, str, str]]) -> None:
    from farm.lang.transduce import find_overlaps

    text = "\n".join(f"rule r{k}{priority}: ({op} {a} {b}) => {a}" for k, (op, a, b, priority) in enumerate(rows))
    parsed = parse_rules(text)
    rules = transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False).rules
    assert find_overlaps(rules) == _every_pair(rules)


def test_the_overlap_analysis_is_not_quadratic_in_rules_that_disagree() -> None:
    """10,000 rules of one root operator, each with its own head: comparing every pair took 114 s for 5,000."""
    from farm.lang.transduce import find_overlaps

    text = "\n".join(f"rule r{i}: (f (c{i} ?x) ?y) => ?y" for i in range(10_000))
    parsed = parse_rules(text)
    ruleset = transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)
    assert "warnings" not in ruleset.__dict__  # not computed until asked for
    assert find_overlaps(ruleset.rules) == [] and ruleset.warnings == ()
