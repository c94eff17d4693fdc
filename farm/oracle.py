"""The naive oracle: terms as nested tuples, every rule tried in priority order, no memo, no sharing.

It is deliberately the most literal reading of the semantics, to check the interpreter and native code
against. It recurses on term depth, so it is meant for the small random terms of differential tests.
"""

from __future__ import annotations

from farm.config import FarmConfig
from farm.rules import App, Compare, Computed, IsConst, Lit, PatternExpr, TermCondition, Var
from farm.semantics import DEFAULT_FUEL, compare, eval_lit, fuel_error, memory_error
from farm.terms import LIT, TermGraph
from farm.transduce import RewriteRule, RuleSet

Term = int | tuple  # an int literal, or (op name, *args)
# Estimated bytes of one term node here: a tuple of a few slots.
BYTES_PER_NODE = 100


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
    def __init__(self, ruleset: RuleSet, fuel: int = DEFAULT_FUEL, max_memory: int | None = None) -> None:
        """max_memory: bytes (0: no cap; None: FARM_MAX_MEMORY or its default), estimated from the nodes it
        builds (right-hand sides and rebuilt parents), all counted as live: an upper bound, since the
        oracle shares nothing on purpose."""
        self.rules = ruleset.rules
        self.fuel = fuel
        self.steps = 0
        self.cap = FarmConfig.from_env().max_memory if max_memory is None else max_memory
        self.built = 0  # nodes built so far
        self._rhs_nodes = [_size(rule.target) for rule in self.rules]

    def normalize(self, term: Term) -> Term:
        while True:
            if isinstance(term, int):
                return term
            self._grow(1)  # the rebuilt node: over shared subterms, rebuilding alone can grow exponentially
            term = (term[0], *(self.normalize(a) for a in term[1:]))
            for rule in self.rules:
                binding: dict[str, Term] = {}
                if _match(rule.source, term, binding) and self._guards(rule, binding):
                    self.steps += 1
                    if self.steps > self.fuel:
                        raise fuel_error(self.fuel, rule.name)
                    self._grow(self._rhs_nodes[rule.index])
                    term = _build(rule.target, binding)
                    break
            else:
                return term

    def _grow(self, nodes: int) -> None:
        self.built += nodes
        if self.cap and self.built * BYTES_PER_NODE > self.cap:
            raise memory_error(self.cap, self.built * BYTES_PER_NODE, "in the oracle")

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


def _size(p: PatternExpr) -> int:
    """Nodes a right-hand side builds (variables are shared, not built); iterative, as patterns nest deep."""
    count, stack = 0, [p]
    while stack:
        q = stack.pop()
        if not isinstance(q, Var):
            count += 1
            if isinstance(q, App):
                stack.extend(q.args)
    return count
