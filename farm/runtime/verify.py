"""Differential checking: native code, the interpreter and the naive oracle on random terms."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from farm.errors import ArenaOutOfMemory, NonTermination
from farm.lang.rules import Computed, Lit, PatternExpr, Var, fold_apps, subexprs
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet
from farm.runtime.loader import NativeRuleset
from farm.semantics import RewriteResult
from farm.semantics.interp import Interpreter
from farm.semantics.oracle import Oracle, from_graph, to_text

FREE_ATOMS = ("x", "y", "z")
# The oracle rebuilds shared subterms as trees: a duplicating rule can make that exponential. Past this many
# bytes (its own estimate) it gives up on a case, as it does on deep recursion, rather than take the machine.
ORACLE_MEMORY = 256 << 20


class TermGenerator:
    """Random ground terms over a ruleset's signature; half are instances of rule sources, so rules fire."""

    def __init__(self, ruleset: RuleSet, rng: random.Random, max_depth: int = 4) -> None:
        self.ruleset = ruleset
        self.rng = rng
        self.max_depth = max_depth
        lits = {e.value for r in ruleset.rules for e in subexprs(r.source) if isinstance(e, Lit)}
        self.literals = sorted(lits | {-1, 0, 1, 2, 3, 7})
        self.ops = [(n, a) for n, a in ruleset.signature]

    def term(self, graph: TermGraph) -> int:
        if self.ruleset.rules and self.rng.random() < 0.5:
            return self.instance(graph, self.rng.choice(self.ruleset.rules).source, {})
        return self.random(graph, self.max_depth)

    def random(self, graph: TermGraph, depth: int) -> int:
        if depth <= 0 or self.rng.random() < 0.25:
            roll = self.rng.random()
            nullary = [n for n, a in self.ops if a == 0]
            if roll < 0.5:
                return graph.lit(self.rng.choice(self.literals))
            if roll < 0.8 and nullary:
                return graph.app_named(self.rng.choice(nullary))
            return graph.app_named(self.rng.choice(FREE_ATOMS))
        name, arity = self.rng.choice(self.ops)
        return graph.app_named(name, [self.random(graph, depth - 1) for _ in range(arity)])

    def instance(self, graph: TermGraph, pattern: PatternExpr, binding: dict[str, int]) -> int:
        def leaf(e: Var | Lit | Computed) -> int:
            if isinstance(e, Var):
                if e.name not in binding:
                    binding[e.name] = self.random(graph, self.max_depth - 2)
                return binding[e.name]
            assert isinstance(e, Lit)
            return graph.lit(e.value)

        return fold_apps(pattern, leaf, lambda app, kids: graph.app_named(app.op, kids))


@dataclass
class VerifyReport:
    cases: int = 0
    normal_forms: int = 0
    nonterminating: int = 0
    oracle_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    firings: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _outcome(result: RewriteResult, i: int) -> str:
    o = result.outcomes[i]
    return f"{type(o).__name__}: {o}" if isinstance(o, NonTermination) else result.graph.to_text(o)


def differential(ruleset: RuleSet, native: NativeRuleset | None, cases: int, seed: int = 0,
                 fuel: int = 10_000, report: VerifyReport | None = None) -> VerifyReport:
    """Run `cases` random terms through every engine; native may be None (interpreter vs oracle only)."""
    report = report or VerifyReport()
    gen = TermGenerator(ruleset, random.Random(seed))
    graph = TermGraph(ruleset.make_signature())
    roots = [gen.term(graph) for _ in range(cases)]
    texts = [graph.to_text(r) for r in roots]
    interp = Interpreter(ruleset).rewrite(graph, roots, fuel)
    nat = None
    if native is not None:
        g2 = TermGraph(ruleset.make_signature())
        nat = native.rewrite(g2, [g2.parse(t)[0] for t in texts], fuel)
        if nat.firings != interp.firings:
            report.mismatches.append(f"firing counts differ: native {nat.firings} interpreter {interp.firings}")
    for i, text in enumerate(texts):
        report.cases += 1
        mine = _outcome(interp, i)
        if nat is not None and _outcome(nat, i) != mine:
            report.mismatches.append(f"{text}: native {_outcome(nat, i)} != interpreter {mine}")
        oracle = Oracle(ruleset, fuel, ORACLE_MEMORY)
        try:
            expected = to_text(oracle.normalize(from_graph(graph, roots[i])))
        except NonTermination:
            report.nonterminating += 1
            continue
        except ArenaOutOfMemory:  # the oracle shares nothing: on shared terms it may grow past its cap
            continue
        report.oracle_checked += 1
        report.normal_forms += 1
        if mine != expected:
            report.mismatches.append(f"{text}: interpreter {mine} != oracle {expected}")
    report.firings += sum(interp.firings)
    return report
