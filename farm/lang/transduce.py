"""TopologicalPattern -> RewriteRule: checks, polarity expansion, priority order and overlap warnings."""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property

from farm.errors import ArityError, RuleError, SourceLocation, UnboundVariableError
from farm.lang.lexer import I64_MIN
from farm.lang.rules import (
    App,
    BinOp,
    Compare,
    Computed,
    Constraint,
    IsConst,
    Lit,
    PatternExpr,
    Polarity,
    TermCondition,
    TopologicalPattern,
    Var,
    constraint_exprs,
    fold_apps,
    subexprs,
    variables,
)
from farm.lang.terms import Signature


@dataclass(frozen=True)
class RewriteRule:
    """One direction of a checked rule, at its place in firing order."""

    index: int
    name: str
    origin: str
    direction: Polarity
    source: App
    target: PatternExpr
    constraints: tuple[Constraint, ...]
    priority: int
    location: SourceLocation | None = field(default=None, compare=False)

    def __str__(self) -> str:
        guards = f" if {', '.join(map(str, self.constraints))}" if self.constraints else ""
        return f"{self.source}{guards} => {self.target}"


@dataclass(frozen=True)
class RuleWarning:
    """A doubtful pair of rules (a duplicate, a shadowed rule, or an overlap), with its message."""

    kind: str  # duplicate | shadowed | overlap
    first: str
    second: str
    message: str


class RuleSetWarning(UserWarning):
    pass


@dataclass(frozen=True)
class RuleSet:
    """Checked rules in firing order, and the operator signature they share."""

    rules: tuple[RewriteRule, ...]
    signature: tuple[tuple[str, int], ...]  # operator name and arity; the index is the op id

    @cached_property
    def warnings(self) -> tuple[RuleWarning, ...]:
        """Duplicate, shadowed and overlapping rules; found on first use only: compiling and rewriting never
        ask, so a large ruleset pays for the analysis only when someone reads the warnings."""
        return tuple(find_overlaps(self.rules))

    def make_signature(self) -> Signature:
        return Signature.of(self.signature)

    def rules_by_root(self) -> dict[str, list[RewriteRule]]:
        by_root: dict[str, list[RewriteRule]] = defaultdict(list)
        for rule in self.rules:
            by_root[rule.source.op].append(rule)
        return by_root

    @cached_property
    def fingerprint_hex(self) -> str:
        text = repr((self.signature, [(r.name, str(r)) for r in self.rules]))
        return hashlib.sha256(text.encode()).hexdigest()

    def fingerprint(self) -> str:
        return self.fingerprint_hex


class Transducer:
    """Register patterns, then transduce one of them or the whole ruleset."""

    def __init__(self, declared_ops: dict[str, int] | None = None) -> None:
        self._patterns: dict[str, TopologicalPattern] = {}
        self._declared = dict(declared_ops or {})

    def register_pattern(self, pattern: TopologicalPattern) -> None:
        if pattern.name in self._patterns:
            raise RuleError(pattern.name, "a rule of this name is already registered", pattern.location)
        self._patterns[pattern.name] = pattern

    def register_all(self, patterns: Iterable[TopologicalPattern]) -> None:
        for pattern in patterns:
            self.register_pattern(pattern)

    def transduce(self, name: str) -> list[RewriteRule]:
        """The checked rewrite rule(s) of one pattern (two for a bidirectional one)."""
        return [r for r in self.transduce_all().rules if r.origin == name]

    def transduce_all(self, warn: bool = True) -> RuleSet:
        signature = self._signature()
        expanded: list[tuple[int, int, RewriteRule]] = []
        for order, pattern in enumerate(self._patterns.values()):
            for sub, rule in enumerate(_expand(pattern)):
                expanded.append((-rule.priority, order * 2 + sub, rule))
        expanded.sort(key=lambda item: item[:2])
        rules = tuple(replace(rule, index=i) for i, (_, _, rule) in enumerate(expanded))
        ruleset = RuleSet(rules, tuple(zip(signature.names, signature.arities)))
        if warn:
            for w in ruleset.warnings:
                warnings.warn(w.message, RuleSetWarning, stacklevel=2)
        return ruleset

    def _signature(self) -> Signature:
        sig = Signature.of(self._declared.items())
        for pattern in self._patterns.values():
            exprs = [pattern.source, pattern.target]
            exprs += [e for c in pattern.constraints for e in constraint_exprs(c)]
            for expr in exprs:
                for sub in subexprs(expr):
                    if isinstance(sub, App):
                        op = sig.lookup(sub.op)
                        arity = sig.arities[op] if op is not None else None
                        if arity is not None and arity != len(sub.args):
                            raise ArityError(pattern.name, f"operator {sub.op!r} is used with arity {len(sub.args)} "
                                                           f"but elsewhere with {arity}", pattern.location)
                        sig.declare(sub.op, len(sub.args))
        return sig


def transduce_patterns(patterns: Iterable[TopologicalPattern], declared_ops: dict[str, int] | None = None,
                       warn: bool = True) -> RuleSet:
    t = Transducer(declared_ops)
    t.register_all(patterns)
    return t.transduce_all(warn=warn)


def _expand(p: TopologicalPattern) -> list[RewriteRule]:
    directions = {Polarity.FORWARD: [Polarity.FORWARD], Polarity.BACKWARD: [Polarity.BACKWARD],
                  Polarity.BIDIRECTIONAL: [Polarity.FORWARD, Polarity.BACKWARD]}[p.polarity]
    out = []
    for d in directions:
        source, target = (p.source, p.target) if d is Polarity.FORWARD else (p.target, p.source)
        name = p.name if p.polarity is not Polarity.BIDIRECTIONAL or d is Polarity.FORWARD else f"{p.name}~rev"
        where = "" if d is Polarity.FORWARD else " (backward direction)"
        out.append(_check(p, name, d, source, target, where))
    return out


def _check(p: TopologicalPattern, name: str, direction: Polarity, source: PatternExpr, target: PatternExpr,
           where: str) -> RewriteRule:
    def fail(message: str, kind: type[RuleError] = RuleError) -> RuleError:
        return kind(name, message + where, p.location)

    if not isinstance(source, App):
        raise fail(f"the source pattern must be an operator application, not {source}")
    if any(isinstance(e, Computed) for e in subexprs(source)):
        raise fail("a computed literal {...} cannot appear in a source pattern")
    bound = set(variables(source))
    for expr in (target, *[e for c in p.constraints for e in constraint_exprs(c)]):
        missing = [v for v in variables(expr) if v not in bound]
        if missing:
            raise fail(f"variable ?{missing[0]} is not bound by the source pattern {source}", UnboundVariableError)
    computed_vars: list[str] = []
    for expr in (target, *[e for c in p.constraints for e in constraint_exprs(c)]):
        for sub in subexprs(expr):
            if isinstance(sub, Computed):
                computed_vars += variables(sub)
                _check_division(sub, p.constraints, fail)
    implicit = tuple(IsConst(Var(v)) for v in dict.fromkeys(computed_vars)
                     if IsConst(Var(v)) not in p.constraints)
    # Pure guards go first: they have no side effects, and they must run before any computed literal
    # in a condition divides by a guarded divisor. Conditions (which normalise) keep their order.
    pure = tuple(c for c in p.constraints if not isinstance(c, TermCondition))
    conditions = tuple(c for c in p.constraints if isinstance(c, TermCondition))
    return RewriteRule(-1, name, p.name, direction, source, target, implicit + pure + conditions, p.priority,
                       p.location)


def _check_division(computed: Computed, constraints: tuple[Constraint, ...], fail: object) -> None:
    """`/` and `%` are allowed only where the guards exclude a zero divisor and MIN / -1."""
    for sub in subexprs(computed.expr):
        if not (isinstance(sub, BinOp) and sub.op in ("/", "%")):
            continue
        if not _excludes(sub.right, 0, constraints):
            raise fail(f"division by {sub.right} needs a guard that excludes zero, e.g. `if {sub.right} != 0`")  # type: ignore[operator]
        if not (_excludes(sub.right, -1, constraints) or _excludes(sub.left, I64_MIN, constraints)):
            raise fail(f"division {sub} can overflow (MIN / -1): add a guard such as `{sub.right} > 0` "  # type: ignore[operator]
                       f"or `{sub.right} != -1`")


def _excludes(expr: object, value: int, constraints: tuple[Constraint, ...]) -> bool:
    """True when the guards prove `expr` is not the literal `value`."""
    if isinstance(expr, Lit):
        return expr.value != value
    if not isinstance(expr, Var):
        return False
    for c in constraints:
        if not isinstance(c, Compare):
            continue
        op, other = c.op, None
        if c.left == expr and isinstance(c.right, Lit):
            other = c.right.value
        elif c.right == expr and isinstance(c.left, Lit):
            other = c.left.value
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        if other is None:
            continue
        if (op == "!=" and other == value) or (op == "==" and other != value):
            return True
        if (op == ">" and value <= other) or (op == ">=" and value < other):
            return True
        if (op == "<" and value >= other) or (op == "<=" and value > other):
            return True
    return False


# ---- overlap analysis (pairwise within one root operator, as ISLE does, among the pairs whose argument heads
# agree: an index by head symbol, as a discrimination tree's first level) ----

def _map_leaves(expr: PatternExpr, leaf: Callable[[PatternExpr], PatternExpr]) -> PatternExpr:
    """Rebuild the applications of `expr` with `leaf` applied, left to right, to every other node."""
    return fold_apps(expr, leaf, lambda node, args: App(node.op, tuple(args)))


def _canonical(expr: PatternExpr, names: dict[str, str]) -> PatternExpr:
    """Variables renamed v0, v1, ... in order of first occurrence (across calls sharing `names`)."""
    return _map_leaves(expr, lambda e: Var(names.setdefault(e.name, f"v{len(names)}")) if isinstance(e, Var) else e)


def _matches(general: PatternExpr, specific: PatternExpr, binding: dict[str, PatternExpr]) -> bool:
    """Does every instance of `specific` match `general`? (specific's variables are held fixed)."""
    pairs = [(general, specific)]
    while pairs:
        g, sp = pairs.pop()
        if isinstance(g, Var):
            if binding.setdefault(g.name, sp) != sp:
                return False
        elif isinstance(g, Lit):
            if sp != g:
                return False
        elif isinstance(g, App) and isinstance(sp, App) and g.op == sp.op and len(g.args) == len(sp.args):
            pairs.extend(reversed(list(zip(g.args, sp.args))))
        else:
            return False
    return True


def _unifiable(a: PatternExpr, b: PatternExpr) -> bool:
    subst: dict[str, PatternExpr] = {}

    def walk(e: PatternExpr) -> PatternExpr:
        while isinstance(e, Var) and e.name in subst:
            e = subst[e.name]
        return e

    def occurs(name: str, e: PatternExpr) -> bool:
        todo = [e]
        while todo:
            e = walk(todo.pop())
            if isinstance(e, Var) and e.name == name:
                return True
            if isinstance(e, App):
                todo.extend(e.args)
        return False

    pairs = [(a, b)]
    while pairs:
        x, y = (walk(e) for e in pairs.pop())
        if x == y:
            continue
        if isinstance(x, Var) or isinstance(y, Var):
            var, other = (x, y) if isinstance(x, Var) else (y, x)
            if occurs(var.name, other):  # type: ignore[union-attr]
                return False
            subst[var.name] = other  # type: ignore[union-attr]
        elif isinstance(x, App) and isinstance(y, App) and x.op == y.op and len(x.args) == len(y.args):
            pairs.extend(zip(x.args, y.args))
        else:
            return False
    return True


def _rename(expr: PatternExpr, suffix: str) -> PatternExpr:
    return _map_leaves(expr, lambda e: Var(e.name + suffix) if isinstance(e, Var) else e)


def find_overlaps(rules: tuple[RewriteRule, ...]) -> list[RuleWarning]:
    """Every pair of rules of one root operator that duplicate, shadow or overlap each other, in rule order. Only
    pairs whose arguments' head symbols agree position by position (equal, or a variable on either side) are
    compared: two patterns that disagree on a head can neither match nor unify, so no warning is lost, and in a
    large ruleset most pairs disagree (5,000 rules under two root operators: 114 s comparing every pair)."""
    found: list[RuleWarning] = []
    by_root: dict[tuple[str, int], list[RewriteRule]] = defaultdict(list)
    for rule in rules:
        by_root[(rule.source.op, len(rule.source.args))].append(rule)
    for group in by_root.values():
        for i, j in _agreeing_pairs(group):
            w = _compare_pair(group[i], group[j])
            if w:
                found.append(w)
    return found


# An argument's head symbol: ("app", op, arity) or ("lit", value, 0); None for a variable (it agrees with any).
Head = tuple[str, object, int] | None


def _head(arg: PatternExpr) -> Head:
    if isinstance(arg, App):
        return ("app", arg.op, len(arg.args))
    if isinstance(arg, Lit):
        return ("lit", arg.value, 0)
    return None


def _agreeing_pairs(group: list[RewriteRule]) -> list[tuple[int, int]]:
    """(i, j), i < j, of the rules whose argument heads agree at every position, in order."""
    heads = [tuple(map(_head, rule.source.args)) for rule in group]
    width = len(heads[0]) if heads else 0
    having: list[dict[Head, set[int]]] = [defaultdict(set) for _ in range(width)]  # position -> head -> rules
    for k, row in enumerate(heads):
        for position, head in enumerate(row):
            having[position][head].add(k)
    pairs: list[tuple[int, int]] = []
    for j, row in enumerate(heads):
        agreeing: set[int] | None = None  # None: no position narrows it (every argument a variable)
        for position, head in enumerate(row):
            if head is not None:
                here = having[position][head] | having[position][None]
                agreeing = here if agreeing is None else agreeing & here
                if not agreeing:
                    break
        pairs.extend((i, j) for i in (range(j) if agreeing is None else agreeing) if i < j)
    pairs.sort()
    return pairs


def _compare_pair(first: RewriteRule, second: RewriteRule) -> RuleWarning | None:
    names_a: dict[str, str] = {}
    names_b: dict[str, str] = {}
    if (_canonical(first.source, names_a) == _canonical(second.source, names_b)
            and _canonical(first.target, names_a) == _canonical(second.target, names_b)
            and str(first.constraints) == str(second.constraints)):
        return RuleWarning("duplicate", first.name, second.name,
                           f"rule {second.name!r} duplicates rule {first.name!r}")
    if not first.constraints and _matches(first.source, second.source, {}):
        return RuleWarning("shadowed", first.name, second.name,
                           f"rule {second.name!r} can never fire: rule {first.name!r} comes first and matches "
                           f"every term it matches")
    if first.priority == second.priority and _unifiable(first.source, _rename(second.source, "'")):
        return RuleWarning("overlap", first.name, second.name,
                           f"rules {first.name!r} and {second.name!r} overlap at equal priority; "
                           f"registration order decides ({first.name!r} first)")
    return None


