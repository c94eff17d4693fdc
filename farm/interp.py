"""The reference interpreter: the same innermost, memoised, fuel-bounded strategy as the native code.

Native code and this interpreter must agree on everything observable: normal forms, firing counts,
and which error (fuel or cycle) a root ends with. Both use an explicit stack of (node, next child).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from farm.config import max_memory_from_env
from farm.errors import NonTermination
from farm.rules import (
    App,
    Compare,
    Computed,
    Constraint,
    IsConst,
    Lit,
    PatternExpr,
    TermCondition,
    Var,
    fold_apps,
)
from farm.semantics import (
    DEFAULT_FUEL,
    MAX_CONDITION_DEPTH,
    check_fuel,
    compare,
    cycle_error,
    depth_error,
    eval_lit,
    fuel_error,
    memory_error,
)
from farm.terms import LIT, TermGraph
from farm.transduce import RewriteRule, RuleSet

# Estimated bytes a graph node costs the interpreter: its columns, interning key, children tuple and memo
# entries. Measured on CPython 3.11 with a growing term (tests/test_limits.py): 340-375 bytes per node of
# arity 0-3; each child adds three 8-byte references (kid_ids, the children tuple, the interning key).
BYTES_PER_NODE = 400
BYTES_PER_CHILD = 24


@dataclass
class RewriteResult:
    """Normal form (a node of `graph`) or the error, per root; firing counts per rule index."""

    graph: TermGraph
    outcomes: list[int | NonTermination]
    firings: list[int]
    engine: str = "interpreter"
    steps: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # native: import, rewrite (in the .so), collect

    def texts(self) -> list[str]:
        return [self.graph.to_text(o) if isinstance(o, int) else f"error: {o}" for o in self.outcomes]


class Interpreter:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        sig = ruleset.make_signature()
        self._by_op: dict[int, list[RewriteRule]] = {}
        for rule in ruleset.rules:
            self._by_op.setdefault(sig.lookup(rule.source.op), []).append(rule)  # type: ignore[arg-type]

    def rewrite(self, graph: TermGraph, roots: list[int], fuel: int = DEFAULT_FUEL,
                max_memory: int | None = None) -> RewriteResult:
        """max_memory: bytes the graph may grow to, estimated from its nodes (0: no cap); None takes
        FARM_MAX_MEMORY or its default. Past it, ArenaOutOfMemory."""
        cap = max_memory_from_env() if max_memory is None else max_memory
        run = _Run(self, graph, check_fuel(fuel), cap)
        outcomes: list[int | NonTermination] = []
        steps = []
        for number, root in enumerate(roots, 1):
            run.steps, run.last_rule, run.term = 0, "", number
            try:
                outcomes.append(run.normalize(root))
            except NonTermination as exc:
                outcomes.append(exc)
            steps.append(run.steps)
        return RewriteResult(graph, outcomes, run.firings, "interpreter", steps)


class _Wait:
    """A node's rule matching, suspended on a condition until `term` has a normal form. Conditions nest
    normalisations; suspending them as frames of the one explicit stack keeps Python's stack flat."""

    __slots__ = ("node", "matcher", "term")

    def __init__(self, node: int, matcher: Generator[int, int, int | None], term: int) -> None:
        self.node, self.matcher, self.term = node, matcher, term


class _Run:
    def __init__(self, interp: Interpreter, graph: TermGraph, fuel: int, cap: int) -> None:
        self.rules_by_op = interp._by_op
        self.rules = interp.ruleset.rules
        self.g = graph
        self.fuel = fuel
        self.cap = cap
        self.term = 0  # which root (from 1), for messages
        self.steps = 0
        self.last_rule = ""
        self.firings = [0] * len(self.rules)
        self.nf: dict[int, int] = {}
        self.via: dict[int, int] = {}
        self.on_stack: set[int] = set()
        self.stack: list[list[int] | _Wait] = []  # [node, next child to look at], or a suspended match
        self.depth = 0  # normalisations in progress: 1 for a root, one more per condition being decided

    def normalize(self, root: int) -> int:
        if root in self.nf:
            return self.nf[root]
        self.depth = 1
        try:
            self._push(root)
            while self.stack:
                self._step()
        except NonTermination:
            for frame in self.stack:
                if isinstance(frame, list):
                    self.on_stack.discard(frame[0])
                    self.via.pop(frame[0], None)
            self.stack.clear()
            raise
        finally:
            self.depth = 0
        return self.nf[root]

    def _push(self, node: int) -> None:
        if node in self.on_stack:
            raise cycle_error(self.steps, self.last_rule)
        self.on_stack.add(node)
        self.stack.append([node, 0])

    def _done(self, node: int, normal: int) -> None:
        self.nf[node] = normal
        self.on_stack.discard(node)
        self.stack.pop()

    def _step(self) -> None:
        g, nf = self.g, self.nf
        frame = self.stack[-1]
        if isinstance(frame, _Wait):
            self.stack.pop()
            self.depth -= 1
            self._drive(frame.node, frame.matcher, nf[frame.term])
            return
        node = frame[0]
        if node in self.via:
            self._done(node, nf[self.via.pop(node)])
            return
        if g.ops[node] == LIT:
            self._done(node, node)
            return
        kids = g.kids(node)
        k = frame[1]
        while k < len(kids) and kids[k] in nf:
            k += 1
        if k < len(kids):
            frame[1] = k
            self._push(kids[k])
            return
        reduced = g.app(g.ops[node], [nf[kid] for kid in kids])
        if reduced == node:
            self._drive(node, self._match(node), None)
        else:
            self._reduce_to(node, reduced)

    def _drive(self, node: int, matcher: Generator[int, int, int | None], value: int | None) -> None:
        """Run the matcher until it decides, or until a condition needs a term normalised that is not yet:
        then the match waits on the stack above the node, below that term (as a nested call would)."""
        try:
            term = matcher.send(value)  # type: ignore[arg-type]
            while term in self.nf:
                term = matcher.send(self.nf[term])
        except StopIteration as decided:
            self._reduce_to(node, decided.value)
            return
        if self.depth >= MAX_CONDITION_DEPTH:
            raise depth_error(self.last_rule, self.steps)
        self.depth += 1
        self.stack.append(_Wait(node, matcher, term))
        self._push(term)

    def _reduce_to(self, node: int, reduced: int | None) -> None:
        nf = self.nf
        if reduced is None:
            self._done(node, node)
        elif reduced in nf:
            self._done(node, nf[reduced])
        else:
            self._push(reduced)
            self.via[node] = reduced

    def _match(self, node: int) -> Generator[int, int, int | None]:
        """The first rule that matches `node` and whose guards hold: its target built, or None. A generator:
        it yields each term a condition needs normalised and receives its normal form."""
        # Every node the run creates is matched once it is fully normal, so checking here bounds growth.
        if self.cap:
            self._check_memory()
        for rule in self.rules_by_op.get(self.g.ops[node], ()):
            binding: dict[str, int] = {}
            if self._match_pattern(rule.source, node, binding) and (yield from self._guards(rule.constraints,
                                                                                             binding)):
                self.firings[rule.index] += 1
                self.steps += 1
                self.last_rule = rule.name
                if self.steps > self.fuel:
                    raise fuel_error(self.fuel, rule.name)
                return self._build(rule.target, binding)
        return None

    def _check_memory(self) -> None:
        g = self.g
        held = len(g.ops) * BYTES_PER_NODE + len(g.kid_ids) * BYTES_PER_CHILD
        if held > self.cap:
            raise memory_error(self.cap, held, f"while rewriting term {self.term}")

    def _match_pattern(self, pattern: PatternExpr, node: int, binding: dict[str, int]) -> bool:
        """Match with a stack of (pattern, node) pairs: patterns may nest thousands deep."""
        g = self.g
        names = g.signature.names
        todo = [(pattern, node)]
        while todo:
            p, n = todo.pop()
            if isinstance(p, Var):
                if binding.setdefault(p.name, n) != n:
                    return False
            elif isinstance(p, Lit):
                if g.ops[n] != LIT or g.value(n) != p.value:
                    return False
            else:
                assert isinstance(p, App)
                if g.ops[n] == LIT or names[g.ops[n]] != p.op:
                    return False
                todo.extend(zip(p.args, g.kids(n)))
        return True

    def _guards(self, constraints: tuple[Constraint, ...], binding: dict[str, int]) -> Generator[int, int, bool]:
        g = self.g
        for c in constraints:
            if isinstance(c, IsConst):
                ok = g.is_lit(binding[c.var.name])
            elif isinstance(c, Compare):
                a, b = (self._build(side, binding) for side in (c.left, c.right))
                if c.op in ("==", "!="):
                    ok = (a == b) == (c.op == "==")
                else:
                    ok = g.is_lit(a) and g.is_lit(b) and compare(c.op, g.value(a), g.value(b))
            else:
                assert isinstance(c, TermCondition)
                left = yield self._build(c.left, binding)
                right = yield self._build(c.right, binding)
                ok = (left == right) == c.equal
            if not ok:
                return False
        return True

    def _build(self, expr: PatternExpr, binding: dict[str, int]) -> int:
        g = self.g
        if isinstance(expr, Var):
            return binding[expr.name]

        def leaf(e: Var | Lit | Computed) -> int:
            if isinstance(e, Var):
                return binding[e.name]
            if isinstance(e, Lit):
                return g.lit(e.value)
            return g.lit(eval_lit(e.expr, {name: g.value(node) for name, node in binding.items() if g.is_lit(node)}))

        return fold_apps(expr, leaf, lambda app, kids: g.app_named(app.op, kids))
