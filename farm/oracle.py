"""The naive oracle: terms as nested tuples, every rule tried in priority order, no memo, no sharing.

It is deliberately the most literal reading of the semantics, to check the interpreter and native code
against. It recurses on term depth, so it is meant for the small random terms of differential tests.
"""

from __future__ import annotations

from farm.rules import App, Compare, Computed, IsConst, Lit, PatternExpr, TermCondition, Var
from farm.semantics import DEFAULT_FUEL, check_fuel, compare, eval_lit, fuel_error
from farm.terms import LIT, TermGraph
from farm.transduce import RewriteRule, RuleSet

Term = int | tuple  # an int literal, or (op name, *args)


def from_graph(graph: TermGraph, node: int) -> Term:
    if graph.ops[node] == LIT:
        return graph.value(node)
    return (graph.signature.names[graph.ops[node]], *(from_graph(graph, k) for k in graph.kids(node)))


def to_text(term: Term) -> str:
    if isinstance(term, int):
        return str(term)
    if len(term) == 1:
        return term[0]
    return "(" + " ".join([term[0], *map(to_text, term[1:])]) + ")"


class Oracle:
    def __init__(self, ruleset: RuleSet, fuel: int = DEFAULT_FUEL) -> None:
        self.rules = ruleset.rules
        self.fuel = check_fuel(fuel)
        self.steps = 0

    def normalize(self, term: Term) -> Term:
        while True:
            if isinstance(term, int):
                return term
            term = (term[0], *(self.normalize(a) for a in term[1:]))
            for rule in self.rules:
                binding: dict[str, Term] = {}
                if _match(rule.source, term, binding) and self._guards(rule, binding):
                    self.steps += 1
                    if self.steps > self.fuel:
                        raise fuel_error(self.fuel, rule.name)
                    term = _build(rule.target, binding)
                    break
            else:
                return term

    def _guards(self, rule: RewriteRule, b: dict[str, Term]) -> bool:
        for c in rule.constraints:
            if isinstance(c, IsConst):
                ok = isinstance(b[c.var.name], int)
            elif isinstance(c, Compare):
                x, y = _build(c.left, b), _build(c.right, b)
                if c.op in ("==", "!="):
                    ok = (x == y) == (c.op == "==")
                else:
                    ok = isinstance(x, int) and isinstance(y, int) and compare(c.op, x, y)
            else:
                assert isinstance(c, TermCondition)
                ok = (self.normalize(_build(c.left, b)) == self.normalize(_build(c.right, b))) == c.equal
            if not ok:
                return False
        return True


def _match(p: PatternExpr, t: Term, b: dict[str, Term]) -> bool:
    if isinstance(p, Var):
        return b.setdefault(p.name, t) == t
    if isinstance(p, Lit):
        return isinstance(t, int) and t == p.value
    assert isinstance(p, App)
    return (isinstance(t, tuple) and t[0] == p.op and len(t) == len(p.args) + 1
            and all(_match(q, u, b) for q, u in zip(p.args, t[1:])))


def _build(p: PatternExpr, b: dict[str, Term]) -> Term:
    if isinstance(p, Var):
        return b[p.name]
    if isinstance(p, Lit):
        return p.value
    if isinstance(p, Computed):
        return eval_lit(p.expr, {k: v for k, v in b.items() if isinstance(v, int)})
    return (p.op, *(_build(a, b) for a in p.args))
