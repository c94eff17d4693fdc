"""Decision trees for the rules of one root operator (Maranget's clause-matrix compilation).

The tree picks exactly the first matching rule in firing order: a leaf stands for the first row of its
matrix once all that row's tests passed; if that rule's guards fail, the leaf's `otherwise` subtree goes
on with the rows after it. Repeated variables become equality tests at the leaf.

A matrix whose tree would grow past a node budget is split in two: the first half's tree falls back on
the second half's tree (`Fail` there means "try the next chunk"), so code size stays linear in the worst case.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from farm.lang.rules import App, Lit, PatternExpr, Var
from farm.lang.transduce import RewriteRule
from farm.trampoline import Step, run

Occurrence = tuple[int, ...]  # path of child indices from the root of the matched node
Head = tuple[str, object, int]  # ("app", op name, arity) or ("lit", value, 0)

NODE_BUDGET = 4000


@dataclass
class Fail:
    pass


@dataclass
class Switch:
    occurrence: Occurrence
    cases: list[tuple[Head, Tree]]
    default: Tree


@dataclass
class Leaf:
    rule: RewriteRule
    bindings: dict[str, Occurrence]
    equalities: list[tuple[Occurrence, Occurrence]]
    otherwise: Tree | None  # None when the rule has no test left to fail


@dataclass
class Chain:
    """Try `first`; where it fails, continue with `rest` (which reads only the root occurrence)."""

    first: Tree
    rest: Tree


Tree = Fail | Switch | Leaf | Chain


@dataclass
class _Row:
    patterns: list[PatternExpr | None]  # None is a wildcard whose variable, if any, is already bound
    rule: RewriteRule
    bindings: dict[str, Occurrence] = field(default_factory=dict)
    equalities: list[tuple[Occurrence, Occurrence]] = field(default_factory=list)

    def with_columns(self, patterns: list[PatternExpr | None], occurrences: list[Occurrence]) -> _Row:
        row = _Row([], self.rule, dict(self.bindings), list(self.equalities))
        for pattern, occ in zip(patterns, occurrences):
            if isinstance(pattern, Var):
                if pattern.name in row.bindings:
                    row.equalities.append((row.bindings[pattern.name], occ))
                else:
                    row.bindings[pattern.name] = occ
                pattern = None
            row.patterns.append(pattern)
        return row


class _TooLarge(Exception):
    pass


def head_of(pattern: PatternExpr) -> Head:
    if isinstance(pattern, Lit):
        return ("lit", pattern.value, 0)
    assert isinstance(pattern, App)
    return ("app", pattern.op, len(pattern.args))


def build_tree(rules: list[RewriteRule], budget: int = NODE_BUDGET) -> Tree:
    """Decision tree for rules that share one root operator, in firing order."""
    if not rules:
        return Fail()
    rows = [_Row([], r).with_columns([r.source], [()]) for r in rules]
    try:
        # One rule's tree is linear in its pattern, so it is built whatever the budget.
        return run(_Compiler(budget if len(rules) > 1 else sys.maxsize).compile([()], rows))
    except _TooLarge:
        half = len(rules) // 2
        return Chain(build_tree(rules[:half], budget), build_tree(rules[half:], budget))


class _Compiler:
    def __init__(self, budget: int) -> None:
        self.budget = budget

    def _count(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise _TooLarge()

    def compile(self, occurrences: list[Occurrence], rows: list[_Row]) -> Step[Tree]:
        """The tree of a clause matrix; a trampoline step (see farm/trampoline.py), as trees are as deep as
        patterns are large."""
        self._count()
        if not rows:
            return Fail()
        first = rows[0]
        if all(p is None for p in first.patterns):
            has_tests = bool(first.equalities or first.rule.constraints)
            if has_tests and rows[1:]:
                rest: Tree | None = yield self.compile(occurrences, rows[1:])
            else:
                rest = Fail() if has_tests else None
            return Leaf(first.rule, first.bindings, first.equalities, rest)
        col = next(i for i, p in enumerate(first.patterns) if p is not None)
        occ = occurrences[col]
        heads = list(dict.fromkeys(head_of(p) for p in (r.patterns[col] for r in rows) if p is not None))
        cases = []
        for h in heads:
            cases.append((h, (yield self.compile(*self._specialize(occurrences, rows, col, h)))))
        others = occurrences[:col] + occurrences[col + 1:]
        default_rows = [_Row(r.patterns[:col] + r.patterns[col + 1:], r.rule, r.bindings, r.equalities)
                        for r in rows if r.patterns[col] is None]
        return Switch(occ, cases, (yield self.compile(others, default_rows)))

    def _specialize(self, occurrences: list[Occurrence], rows: list[_Row], col: int,
                    head: Head) -> tuple[list[Occurrence], list[_Row]]:
        """The occurrences and rows of the matrix for the case `head` of column `col`."""
        arity = head[2]
        occ = occurrences[col]
        new_occs = [occ + (j,) for j in range(arity)]
        others = occurrences[:col] + occurrences[col + 1:]
        out = []
        for r in rows:
            p = r.patterns[col]
            if p is None:
                subs: list[PatternExpr | None] = [None] * arity
            elif head_of(p) == head:
                subs = list(p.args) if isinstance(p, App) else []
            else:
                continue
            rest = r.patterns[:col] + r.patterns[col + 1:]
            row = r.with_columns(subs, new_occs)
            row.patterns = row.patterns + rest
            out.append(row)
        return new_occs + others, out
