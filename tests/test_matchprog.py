"""The match program: what a rule's attempt does, in order, lowered once for every backend."""

from __future__ import annotations

from farm.compiler.matchprog import (
    Attempt,
    Binary,
    Build,
    Call,
    Compute,
    Const,
    EnterCondition,
    Eval,
    Fire,
    IsLit,
    LeaveCondition,
    LitCompare,
    Lowering,
    MakeLit,
    Node,
    NoMatch,
    Payload,
    Return,
    Same,
    Switch,
    Temp,
)
from farm.compiler.matchprog import Test as Check  # not a test class

from .conftest import ruleset_of

RULES = """
rule le_z: (le z ?y) => true
rule le_s: (le (s ?x) (s ?y)) => (le ?x ?y)
rule pick [priority 1]: (max ?a ?b) if (le ?a ?b) = true => (pair ?b ?b)
rule same: (max ?a ?a) => ?a
rule lits: (max ?a ?b) if const(?a), ?a < ?b, ?b != 3 => {?a * 2 + ?b}
rule fallback: (max ?a ?b) => 7
"""


def test_attempt_steps_follow_firing_order_and_evaluate_each_expression_once() -> None:
    lowering = Lowering(ruleset_of(RULES))
    program = lowering.operator("max")
    pick = program.body
    assert isinstance(pick, Attempt) and pick.rule.name == "pick"
    a, b = Node((0,)), Node((1,))
    assert pick.steps == (
        EnterCondition(), Eval(Temp(0), Call("le", (a, b), True), kept=0), Eval(Temp(1), Build("true", ())),
        LeaveCondition(), Check(Same(Temp(0), Temp(1))), Fire(pick.rule.index),
        Eval(Temp(2), Build("pair", (b, b))), Return(Temp(2)))
    same = pick.otherwise
    assert isinstance(same, Attempt) and same.steps == (Check(Same(a, b)), Fire(same.rule.index), Return(a))
    lits = same.otherwise
    assert isinstance(lits, Attempt) and lits.steps == (
        Check(IsLit(b)), Check(IsLit(a)),  # the transducer adds const(?b) before the rule's own guards
        Check(LitCompare("<", a, b)), Check(LitCompare("==", b, 3), holds=False),
        Fire(lits.rule.index),
        Eval(Temp(0), Compute((Payload(a), Const(2), Binary("*", 0, 1), Payload(b), Binary("+", 2, 3)))),
        Return(Temp(0)))
    fallback = lits.otherwise
    assert isinstance(fallback, Attempt) and fallback.steps[-2:] == (Eval(Temp(0), MakeLit(7)),
                                                                      Return(Temp(0)))
    assert isinstance(fallback.otherwise, NoMatch)
    # kept: the call's value, read past the Eval of `true`; `true` itself is read before the next Eval
    assert (program.temps, program.first_rule) == (1, pick.rule.index)


def test_switch_binds_children_and_the_call_itself_is_not_switched_on() -> None:
    program = Lowering(ruleset_of(RULES)).operator("le")
    switch = program.body
    assert isinstance(switch, Switch) and switch.occurrence == (0,) and not switch.literals
    assert [(case.op, case.children) for case in switch.operators] == [("z", ()), ("s", ((0, 0),))]
    inner = switch.operators[1].body
    assert isinstance(inner, Switch) and inner.occurrence == (1,)
    le_s = inner.operators[0].body
    assert isinstance(le_s, Attempt)
    assert le_s.steps[1] == Eval(Temp(0), Call("le", (Node((0, 0)), Node((1, 0))), True))
    assert isinstance(switch.default, NoMatch) and program.temps == 0


def test_a_value_is_kept_only_when_read_past_the_next_eval() -> None:
    """Every Eval may collect: a value read after a later Eval must be where the collector sees it; one that
    only the next Eval reads (as an argument, before it allocates) need not be."""
    program = Lowering(ruleset_of("""
rule h: (h ?x) => (s ?x)
rule k: (k ?x) => (s (s ?x))
rule f: (f ?x) => (pair (h ?x) (s (k ?x)))
""")).operator("f")
    attempt = program.body
    assert isinstance(attempt, Attempt)
    x = Node((0,))
    assert attempt.steps[1:] == (
        Eval(Temp(0), Call("h", (x,), True), kept=0),  # read by the pair, past k's call and the s
        Eval(Temp(1), Call("k", (x,), True)), Eval(Temp(2), Build("s", (Temp(1),))),
        Eval(Temp(3), Build("pair", (Temp(0), Temp(2)))), Return(Temp(3)))
    assert program.temps == 1
