"""Review of e0baa6c and 1377911: tier 0's quick modules (irbuild.quick: calls through @callees, tests instead of
switches of up to 16 cases, no alias tags or branch weights, the runtime's farm_fire and farm_intern0-4) and the
policy's printout scan starting at _first_line. No bug was found; these are the strongest fast checks that ran:
tier 0 (in memory, -O0, quick) against the interpreter (normal forms, errors, firing counts, steps) and -O2, on
hostile rulesets, and the policy on IR it must keep refusing."""

from __future__ import annotations

import random

import pytest

from farm.cache.engine import Engine
from farm.compiler.codegen.heap import SHARED_INTERN_ARITY
from farm.compiler.codegen.irbuild import QUICK_SWITCH_CASES
from farm.compiler.policy import check_module, parse_ir
from farm.errors import FarmError, PolicyViolation
from farm.lang.dsl import parse_rules
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet, transduce_patterns
from farm.runtime.verify import TermGenerator
from farm.semantics.interp import Interpreter


def _rules(text: str) -> RuleSet:
    parsed = parse_rules(text)
    return transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


def _same_as_interpreter(engine: Engine, ruleset: RuleSet, terms: list[str], fuel: int, opt_level: int = 0) -> None:
    graph = TermGraph(ruleset.make_signature())
    expected = Interpreter(ruleset).rewrite(graph, graph.parse("\n".join(terms)), fuel)
    native = engine.load_in_memory(ruleset, opt_level=opt_level)
    graph = TermGraph(ruleset.make_signature())
    got = native.rewrite(graph, graph.parse("\n".join(terms)), fuel)
    assert got.texts() == expected.texts()
    assert got.firings == expected.firings
    assert got.steps == expected.steps


def _num(n: int) -> str:
    return "(s " * n + "z" + ")" * n


# Arities beyond SHARED_INTERN_ARITY (the module's own intern<n>) and near the GHC parameter limit; memoised
# (fib: tree recursion), tracked (even/odd: mutual recursion) and looping operators; fuel from 1 to plenty.
WIDE = """op z/0, s/1, fib/1, add/2, loop/1, even/1, odd/1, t/0, f/0, big/9, mk/1, p5/5, p12/12, w/1
rule a0: (add z ?y) => ?y
rule a1: (add (s ?x) ?y) => (s (add ?x ?y))
rule f0: (fib z) => z
rule f1: (fib (s z)) => (s z)
rule f2: (fib (s (s ?n))) => (add (fib (s ?n)) (fib ?n))
rule l1: (loop ?x) => (loop (s ?x))
rule e0: (even z) => t
rule e1: (even (s ?x)) => (odd ?x)
rule o0: (odd z) => f
rule o1: (odd (s ?x)) => (even ?x)
rule b1: (big ?a ?b ?c ?d ?e ?f ?g ?h (s ?i)) => (big ?b ?c ?d ?e ?f ?g ?h ?a ?i)
rule b2: (big ?a ?b ?c ?d ?e ?f ?g ?h z) => (add ?a ?h)
rule m1: (mk ?x) => (big ?x ?x (s ?x) z z ?x z ?x (s (s (s ?x))))
rule p1: (p5 ?a ?b ?c ?d (s ?e)) => (p12 ?e ?d ?c ?b ?a ?a ?b ?c ?d ?e t f)
rule p2: (p12 ?a ?b ?c ?d ?e ?f ?g ?h ?i ?j t ?l) => (p5 ?a ?b ?c ?d ?a)
rule w1: (w ?x) => (p5 ?x ?x (s ?x) z (s (s ?x)))
"""


@pytest.mark.parametrize("fuel", [1, 7, 50, 500, 100_000])
def test_tier_0_wide_memoised_tracked_and_fuel_match_the_interpreter(session_engine: Engine, fuel: int) -> None:
    assert SHARED_INTERN_ARITY < 5
    terms = [f"(fib {_num(n)})" for n in range(12)] + [
        "(loop z)", f"(even {_num(301)})", f"(mk {_num(3)})", f"(mk (fib {_num(6)}))", f"(w {_num(4)})",
        f"(add {_num(20_000)} {_num(2)})"]
    _same_as_interpreter(session_engine, _rules(WIDE), terms, fuel)


@pytest.mark.parametrize("n", [QUICK_SWITCH_CASES - 1, QUICK_SWITCH_CASES, QUICK_SWITCH_CASES + 1, 20])
def test_tier_0_switches_and_tests_at_the_boundary_match_the_interpreter(session_engine: Engine, n: int) -> None:
    """n constructor cases, n literal cases (some negative), n root operators (farm_call, the op tables)."""
    text = "op " + ", ".join([f"c{i}/0" for i in range(n)] + [f"f{i}/1" for i in range(n)]) + ", g/1, s/1, z/0\n"
    for i in range(n):
        text += f"rule rc{i}: (f0 c{i}) => (g {i * 3 - 5})\n"
        text += f"rule rl{i}: (g {i * 3 - 5}) => c{(i * 7) % n}\n"
        text += f"rule rs{i}: (f{i} (s ?x)) => (f{(i + 1) % n} ?x)\n"
        text += f"rule rz{i}: (f{i} z) => {i}\n"
    terms = [f"(f0 c{i})" for i in range(n)] + [f"(g {v})" for v in range(-6, 3 * n)] + \
        [f"(f{i} {_num(k)})" for i in range(n) for k in (0, 3, n + 2)]
    ruleset = _rules(text)
    _same_as_interpreter(session_engine, ruleset, terms, 10_000)
    _same_as_interpreter(session_engine, ruleset, terms, 10_000, opt_level=2)


def _random_rules(seed: int) -> str:
    """Up to 22 constructors (arities 0 to 5), up to 6 defined operators (arities 1 to 12), literals from -3 up to
    24 (literal switches past 16 cases), repeated variables, guards, computed literals, priorities."""
    rng = random.Random(seed)
    cons = [(f"c{i}", rng.choice([0, 0, 1, 2, 2, 5])) for i in range(rng.randint(3, 22))]
    funs = [(f"f{i}", rng.choice([1, 1, 2, 3, 5, 6, 9, 12])) for i in range(rng.randint(1, 6))]
    ops = cons + funs
    lits = list(range(-3, rng.choice([3, 16, 17, 25])))

    def pattern(depth: int, names: list[str]) -> str:
        if depth <= 0 or rng.random() < 0.35:
            x = rng.random()
            if x < 0.45:
                names.append(f"?v{rng.randint(0, 4)}")
                return names[-1]
            if x < 0.75 or depth <= 0:
                return str(rng.choice(lits))
        op, arity = rng.choice(cons)
        return op if arity == 0 else "(" + " ".join([op] + [pattern(depth - 1, names) for _ in range(arity)]) + ")"

    def target(depth: int, names: list[str]) -> str:
        r = rng.random()
        if depth == 0 or r < 0.3:
            return rng.choice(names) if names and rng.random() < 0.6 else str(rng.choice(lits))
        if names and r < 0.4:
            return "{" + f"{rng.choice(names)} {rng.choice('+-*&|^')} {rng.choice(names + ['1', '3'])}" + "}"
        op, arity = rng.choice(ops if rng.random() < 0.5 else cons)
        return op if arity == 0 else "(" + " ".join([op] + [target(depth - 1, names) for _ in range(arity)]) + ")"

    lines = ["op " + ", ".join(f"{name}/{arity}" for name, arity in ops)]
    for k in range(rng.randint(3, 40)):
        op, arity = rng.choice(funs)
        names: list[str] = []
        source = "(" + " ".join([op] + [pattern(2, names) for _ in range(arity)]) + ")"
        bound = sorted(set(names))
        guards = []
        if bound and rng.random() < 0.3:
            v = rng.choice(bound)
            guards.append(rng.choice([f"const({v})", f"{v} != {rng.choice(lits)}", f"{v} < {rng.choice(lits)}"]))
        if len(bound) > 1 and rng.random() < 0.2:
            guards.append(f"{bound[0]} <= {bound[1]}")
        priority = f" [priority {rng.randint(0, 3)}]" if rng.random() < 0.3 else ""
        guard = (" if " + ", ".join(guards)) if guards else ""
        lines.append(f"rule r{k}{priority}: {source}{guard} => {target(2, bound)}")
    return "\n".join(lines) + "\n"


def test_tier_0_matches_the_interpreter_on_random_hostile_rulesets(session_engine: Engine) -> None:
    """40 seeds here (1069 ran in the review, with no mismatch): normal forms, errors and firing counts."""
    checked = 0
    for seed in range(40):
        try:
            ruleset = _rules(_random_rules(seed))
        except FarmError:
            continue
        generator, graph = TermGenerator(ruleset, random.Random(seed)), TermGraph(ruleset.make_signature())
        terms = [graph.to_text(generator.term(graph)) for _ in range(80)]
        _same_as_interpreter(session_engine, ruleset, terms, 300)
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize("text", [
    '!llvm.linker.options = !{!0}\n!0 = !{!"-lfoo"}\n',  # named metadata only: no function, no attribute group
    '!0 = !{!"-lfoo"}\n!llvm.linker.options = !{!0}\n',  # an unnamed node written first
    '!\\6Clvm.dependent-libraries = !{!0}\n!0 = !{!"foo"}\n',  # an escaped name
    'define i64 @f() #0 {\n  ret i64 0\n}\nattributes #0 = { "section"="x" }\n',
    '@g = global i64 0 #0\nattributes #0 = { "bss-section"=".init_array" }\n',  # no function, no metadata
    '@g = global i64 0 #0\nattributes #0 = { "data-section"=".init_array" }\n!llvm.foo = !{!0}\n!0 = !{}\n',
])
def test_the_printout_scan_from_the_first_line_still_refuses(text: str) -> None:
    with pytest.raises(PolicyViolation):
        check_module(parse_ir(text, "hostile"), "hostile")
