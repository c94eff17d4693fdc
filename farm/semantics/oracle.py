"""The naive oracle: terms as nested tuples, every rule tried in priority order, no memo, no sharing.

It is deliberately the most literal reading of the semantics, to check the interpreter and native code
against. Like every walk over terms in farm, it keeps its pending work in lists, not on Python's stack.
"""

from __future__ import annotations

from farm.config import max_memory_from_env
from farm.lang.rules import App, Compare, Computed, IsConst, Lit, PatternExpr, TermCondition, Var, fold_apps
from farm.lang.terms import LIT, TermGraph
from farm.lang.transduce import RewriteRule, RuleSet
from farm.semantics import (
    DEFAULT_FUEL,
    MAX_CONDITION_DEPTH,
    check_fuel,
    compare,
    depth_error,
    eval_lit,
    fuel_error,
    memory_error,
)
from farm.trampoline import Step, run

Term = int | tuple  # an int literal, or (op name, *args)
# Estimated bytes of one term node here: a tuple of a few slots.
BYTES_PER_NODE = 100


def from_graph(graph: TermGraph, node: int) -> Term:
    """The term of a graph node as nested tuples, built children first without recursion."""
    done: dict[int, Term] = {}
    stack = [node]
    while stack:
        n = stack[-1]
        if graph.ops[n] == LIT:
            done[n] = graph.value(n)
        else:
            pending = [k for k in graph.kids(n) if k not in done]
            if pending:
                stack.extend(pending)
                continue
            done[n] = (graph.signature.names[graph.ops[n]], *(done[k] for k in graph.kids(n)))
        stack.pop()
    return done[node]


def to_text(term: Term) -> str:
    parts: list[str] = []
    stack: list[Term | None] = [term]  # None closes a parenthesis
    while stack:
        t = stack.pop()
        if t is None:
            parts.append(")")
            continue
        if parts and parts[-1] != "(":
            parts.append(" ")
        if isinstance(t, int):
            parts.append(str(t))
        elif len(t) == 1:
            parts.append(t[0])
        else:
            parts.extend(("(", t[0]))
            stack.append(None)
            stack.extend(reversed(t[1:]))
    return "".join(parts)


def same(a: Term, b: Term) -> bool:
    """Structural equality of nested tuples without recursion (`==` on tuples recurses in C). A pair of tuples is
    compared once: a right-hand side that uses a variable twice refers to one tuple twice, so a term of a few
    thousand tuples can be a tree of 2^1000 nodes, and comparing it as a tree never ended."""
    pairs = [(a, b)]
    compared: set[tuple[int, int]] = set()  # ids of pairs of tuples met so far (all alive: a and b hold them)
    while pairs:
        x, y = pairs.pop()
        if x is y:
            continue
        if isinstance(x, int) or isinstance(y, int):
            if not (isinstance(x, int) and isinstance(y, int) and x == y):
                return False
        elif len(x) != len(y) or x[0] != y[0]:
            return False
        elif (id(x), id(y)) not in compared:
            compared.add((id(x), id(y)))
            pairs.extend(zip(x[1:], y[1:]))
    return True


class Oracle:
    def __init__(self, ruleset: RuleSet, fuel: int = DEFAULT_FUEL, max_memory: int | None = None) -> None:
        """max_memory: bytes (0: no cap; None: FARM_MAX_MEMORY or its default), estimated from the nodes it
        builds (right-hand sides and rebuilt parents), all counted as live: an upper bound, since the
        oracle shares nothing on purpose."""
        self.rules = ruleset.rules
        self.fuel = check_fuel(fuel)
        self.steps = 0
        self.cap = max_memory_from_env() if max_memory is None else max_memory
        self.built = 0  # nodes built so far
        self._rhs_nodes = [_size(rule.target) for rule in self.rules]
        self.depth = 0
        self.last_rule = ""

    def normalize(self, term: Term) -> Term:
        depth = self.depth
        try:
            return run(self._normalize(term))
        finally:
            self.depth = depth  # a step that raised never ran its own decrement

    def _normalize(self, term: Term) -> Step[Term]:
        """Innermost: arguments first, then the first rule that matches, and the result again. The pending
        terms are frames of a list, [term, next argument, normal head and arguments so far]; a condition's
        normalisation is a trampoline step (farm/trampoline.py), so nothing here recurses in Python."""
        if isinstance(term, int):
            return term
        if self.depth >= MAX_CONDITION_DEPTH:
            raise depth_error(self.last_rule, self.steps)
        self.depth += 1
        stack: list[list] = [[term, 1, [term[0]]]]
        while True:
            frame = stack[-1]
            current, i, normal = frame
            if i < len(current):
                frame[1] = i + 1
                arg = current[i]
                if isinstance(arg, int):
                    normal.append(arg)
                else:
                    stack.append([arg, 1, [arg[0]]])
                continue
            self._grow(1)  # the rebuilt node: over shared subterms, rebuilding alone can grow exponentially
            rebuilt = tuple(normal)
            rewritten = yield from self._rewrite(rebuilt)
            if isinstance(rewritten, tuple):
                stack[-1] = [rewritten, 1, [rewritten[0]]]
                continue
            result: Term = rebuilt if rewritten is None else rewritten
            stack.pop()
            if not stack:
                self.depth -= 1
                return result
            stack[-1][2].append(result)

    def _rewrite(self, term: tuple) -> Step[Term | None]:
        """The first matching rule's result, or None when no rule matches."""
        for rule in self.rules:
            binding: dict[str, Term] = {}
            if _match(rule.source, term, binding) and (yield from self._guards(rule, binding)):
                self.steps += 1
                self.last_rule = rule.name
                if self.steps > self.fuel:
                    raise fuel_error(self.fuel, rule.name)
                self._grow(self._rhs_nodes[rule.index])
                return _build(rule.target, binding)
        return None

    def _grow(self, nodes: int) -> None:
        self.built += nodes
        if self.cap and self.built * BYTES_PER_NODE > self.cap:
            raise memory_error(self.cap, self.built * BYTES_PER_NODE, "in the oracle")

    def _guards(self, rule: RewriteRule, b: dict[str, Term]) -> Step[bool]:
        for c in rule.constraints:
            if isinstance(c, IsConst):
                ok = isinstance(b[c.var.name], int)
            elif isinstance(c, Compare):
                x, y = _build(c.left, b), _build(c.right, b)
                if c.op in ("==", "!="):
                    ok = same(x, y) == (c.op == "==")
                else:
                    ok = isinstance(x, int) and isinstance(y, int) and compare(c.op, x, y)
            else:
                assert isinstance(c, TermCondition)
                left = yield self._normalize(_build(c.left, b))
                right = yield self._normalize(_build(c.right, b))
                ok = same(left, right) == c.equal
            if not ok:
                return False
        return True


def _match(p: PatternExpr, t: Term, b: dict[str, Term]) -> bool:
    pairs = [(p, t)]
    while pairs:
        q, u = pairs.pop()
        if isinstance(q, Var):
            if not same(b.setdefault(q.name, u), u):
                return False
        elif isinstance(q, Lit):
            if not (isinstance(u, int) and u == q.value):
                return False
        else:
            assert isinstance(q, App)
            if not (isinstance(u, tuple) and u[0] == q.op and len(u) == len(q.args) + 1):
                return False
            pairs.extend(zip(q.args, u[1:]))
    return True


def _build(p: PatternExpr, b: dict[str, Term]) -> Term:
    def leaf(e: Var | Lit | Computed) -> Term:
        if isinstance(e, Var):
            return b[e.name]
        if isinstance(e, Lit):
            return e.value
        return eval_lit(e.expr, {k: v for k, v in b.items() if isinstance(v, int)})

    return fold_apps(p, leaf, lambda app, args: (app.op, *args))


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
