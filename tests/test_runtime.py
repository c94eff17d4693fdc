"""The native runtime v2 under stress: the copying collector, the memo, conditions, errors mid-root, bad
input, against the interpreter (farm/semantics/interp.py, the reference) step for step.

Each test checks that the programs it runs really collect (the arena's `collections`), so a change to the
initial space cannot quietly turn a collector test into one that never moves a node.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import random
import subprocess
import sys
import threading
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from farm.cache.engine import Engine
from farm.compiler.codegen.abi import ERR_INPUT
from farm.compiler.codegen.heap import POPULATE_LEAD
from farm.config import FarmConfig
from farm.errors import (
    ArenaOutOfMemory,
    CallsTooDeep,
    ConditionsTooDeep,
    FuelExhausted,
    RewriteCycle,
    RuleError,
    TermError,
)
from farm.lang.dsl import parse_rules
from farm.lang.rules import TopologicalPattern
from farm.lang.terms import ID_TYPECODE, LIT, VALUE_TYPECODE, TermGraph
from farm.lang.transduce import RuleSet, transduce_patterns
from farm.runtime import loader, mapped
from farm.runtime.loader import NativeRuleset
from farm.runtime.mapped import MAPPED_MIN_BYTES, address, bounded_columns
from farm.runtime.verify import TermGenerator
from farm.semantics import MAX_CALL_DEPTH, MAX_CONDITION_DEPTH, MAX_MEMO_ENTRIES
from farm.semantics.callgraph import untracked_calls
from farm.semantics.interp import Interpreter, RewriteResult

from .conftest import ROOT, ruleset_of
from .test_differential import rule as random_rule

INITIAL_WORDS = 1 << 16  # farm/compiler/codegen/runtime.py: each space starts this large

LISTS = """
rule app0: (app nil ?ys) => ?ys
rule app1: (app (cons ?x ?xs) ?ys) => (cons ?x (app ?xs ?ys))
rule rev0: (rev nil) => nil
rule rev1: (rev (cons ?x ?xs)) => (app (rev ?xs) (cons ?x nil))
rule len0: (len nil) => 0
rule len1: (len (cons ?x ?xs)) => (inc (len ?xs))
rule inc: (inc ?n) if const(?n) => {?n + 1}
rule mk0: (mk 0) => nil
rule mk1: (mk ?n) if ?n > 0 => (cons (w ?n) (mk {?n - 1}))
rule mkk0: (mkk 0 ?t) => nil
rule mkk1: (mkk ?n ?t) if ?n > 0 => (cons (v ?n ?t) (mkk {?n - 1} ?t))
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(FarmConfig(cache_dir=tmp_path_factory.mktemp("runtime-cache"), opt_level=1))


_LOADED: dict[tuple[str, int], tuple[RuleSet, NativeRuleset]] = {}


def native_of(engine: Engine, text: str, opt_level: int = 1) -> tuple[RuleSet, NativeRuleset]:
    """The ruleset of `text`, compiled and loaded in this process (once per module run)."""
    key = (text, opt_level)
    if key not in _LOADED:
        rs = ruleset_of(text)
        _LOADED[key] = rs, engine.load_in_memory(rs, opt_level=opt_level)
    return _LOADED[key]


# ---- comparing the engines

def outcome_keys(result: RewriteResult, common: TermGraph) -> list[object]:
    """Each root's normal form as a node of `common` (structural: texts of shared terms can be exponential),
    or its error as (type, message)."""
    return [copied(result.graph, o, common) if isinstance(o, int) else (type(o).__name__, str(o))
            for o in result.outcomes]


def copied(source: TermGraph, root: int, into: TermGraph) -> int:
    """The term `root` of `source` as a node of `into` (operators matched by name), without recursion."""
    names = source.signature.names

    def copy(node: int, kids: list[int]) -> int:
        op = source.ops[node]
        return into.lit(source.value(node)) if op == LIT else into.app_named(names[op], kids)

    return source.fold(root, copy)


def assert_same(native: RewriteResult, interp: RewriteResult, rs: RuleSet) -> None:
    common = TermGraph(rs.make_signature())
    assert outcome_keys(native, common) == outcome_keys(interp, common)
    assert native.steps == interp.steps
    assert native.firings == interp.firings


Build = Callable[[TermGraph], list[int]]


def parsed(text: str) -> Build:
    return lambda graph: graph.parse(text)


def both(engine: Engine, rules: str, build: Build, fuel: int = 10_000_000) -> tuple[RewriteResult, RewriteResult]:
    """The same roots through the native code and the interpreter, each on its own graph; asserts they agree."""
    rs, native = native_of(engine, rules)
    g1, g2 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
    a = native.rewrite(g1, build(g1), fuel, 0)
    b = Interpreter(rs).rewrite(g2, build(g2), fuel, 0)
    assert_same(a, b, rs)
    return a, b


# ---- calling the library directly (ctypes), to read the arena's statistics and to pass raw columns

@dataclass
class Raw:
    code: int
    out: list[int]
    info: list[int]
    stats: dict[str, int]


def raw_rewrite(native: NativeRuleset, columns: tuple[array, array, array, array], roots: list[int],
                rows: int | None = None, n_kids: int | None = None, fuel: int = 10_000_000, cap: int = 0) -> Raw:
    """farm_rewrite on columns as given (ops, arities, values, kids), on the loader's big stack, on a fresh
    arena; the arena's statistics are read before it is freed."""
    with fresh_arena(native, cap) as arena:
        return rewrite_on(native, arena, columns, roots, rows, n_kids, fuel)


@contextmanager
def fresh_arena(native: NativeRuleset, cap: int = 0) -> Iterator[Any]:
    """An arena set up as the loader sets one up (memory cap, native stack), freed afterwards."""
    arena = native.lib.farm_arena_new()
    assert arena
    arena.contents.limit = cap if cap else loader.NO_LIMIT
    arena.contents.stack_bytes = loader.STACK_BYTES - loader.STACK_MARGIN
    try:
        yield arena
    finally:
        native.lib.farm_arena_free(arena)


def rewrite_on(native: NativeRuleset, arena: Any, columns: tuple[array, array, array, array], roots: list[int],
               rows: int | None = None, n_kids: int | None = None, fuel: int = 10_000_000) -> Raw:
    """farm_rewrite on a given arena (which keeps its nodes and memo from earlier calls)."""
    ops, arities, values, kids = columns
    root_rows = array("q", roots)
    out, info = array("q", [0] * len(roots)), array("q", [0] * (2 * len(roots)))
    count = (max(roots) + 1 if roots else 0) if rows is None else rows
    pointers = [loader._ptr(c) for c in (ops, arities, values, kids)]

    def call() -> int:
        return int(native.lib.farm_rewrite(arena, count, *pointers, len(kids) if n_kids is None else n_kids,
                                           len(roots), loader._ptr(root_rows), loader._ptr(out), loader._ptr(info),
                                           fuel))

    code = loader._BIG_STACK.run(call, lambda: None)
    stats = {name: getattr(arena.contents, name) for name in ("collections", "peak_words", "heap_cap", "memo_count",
                                                              "memo_done")}
    return Raw(code, list(out), list(info), stats)


def marked_export(native: NativeRuleset, rs: RuleSet, terms: str) -> tuple[list[array], list[int]]:
    """The terms' normal forms as farm_mark then farm_export write them on this thread, into plain arrays (no pages
    populated alongside): the columns and the mapped roots."""
    with fresh_arena(native) as arena:
        g = TermGraph(rs.make_signature())
        out = array("q", rewrite_on(native, arena, columns_of(g), g.parse(terms)).out)
        sizes, roots = loader._zeros(2), loader._zeros(len(out))
        native.lib.farm_mark(arena, len(out), loader._ptr(out), loader._ptr(sizes))
        nodes, children = sizes
        columns = [loader._zeros(nodes, ID_TYPECODE), loader._zeros(nodes), loader._zeros(nodes, ID_TYPECODE),
                   loader._zeros(children, ID_TYPECODE)]
        assert native.lib.farm_export(arena, len(out), loader._ptr(out), loader._ptr(roots),
                                      *map(loader._ptr, columns)) == nodes
    return columns, list(roots)


def columns_of(g: TermGraph) -> tuple[array, array, array, array]:
    return g.ops, g.arities, g.vals, g.kid_ids


def arena_stats(engine: Engine, rules: str, build: Build) -> dict[str, int]:
    rs, native = native_of(engine, rules)
    g = TermGraph(rs.make_signature())
    roots = build(g)
    raw = raw_rewrite(native, (g.ops, g.arities, g.vals, g.kid_ids), roots)
    assert raw.code == 0
    return raw.stats


def numeral(n: int) -> str:
    return "(s " * n + "0" + ")" * n


# ---- 1. the collector

WIDE = " ".join(f"?x{i}" for i in range(20))
COLLECTOR_PROGRAMS: dict[str, tuple[str, str]] = {
    # quadratic garbage: every append's intermediate list dies
    "naive reverse": (LISTS, "(rev (mk 700)) (len (rev (rev (mk 400)))) (rev (mk 3))"),
    # the same lists built again and again: the memo keeps (mk n), reverse's garbage goes
    "repeated building": (LISTS + """
rule rep0: (rep 0 ?n) => done
rule rep1: (rep ?k ?n) if ?k > 0 => (seq (len (rev (mkk ?n ?k))) (rep {?k - 1} ?n))
rule seq: (seq ?a ?b) => ?b
""", "(rep 12 150) (rep 13 150) (rep 12 150)"),
    # DAG-shaped results: exponential as trees, linear as graphs, with reverse's garbage in between
    "dag": (LISTS + """
rule d0: (dbl 0) => leaf
rule d1: (dbl ?n) if ?n > 0 => (two (dbl {?n - 1}) (dbl {?n - 1}) (len (rev (mkk 12 ?n))))
rule g0: (grow 0 ?t) => ?t
rule g1: (grow ?n ?t) if ?n > 0 => (grow {?n - 1} (two ?t (wrap ?t) (len (rev (mkk 10 ?t)))))
""", "(dbl 1500) (grow 2500 z) (grow 2500 leaf) (dbl 1500) (dbl 1499)"),
    # Peano numerals: deep terms, a tower of garbage partial sums
    "numerals": ("""
rule p0: (plus 0 ?y) => ?y
rule p1: (plus (s ?x) ?y) => (s (plus ?x ?y))
rule m0: (mul 0 ?y) => 0
rule m1: (mul (s ?x) ?y) => (plus ?y (mul ?x ?y))
rule n0: (num 0) => 0
rule n1: (num ?n) if ?n > 0 => (s (num {?n - 1}))
""", f"(mul (num 250) (num 250)) (num 250) (plus {numeral(3000)} (num 3)) (mul {numeral(40)} {numeral(400)})"),
    # computed literals in large numbers (each a node; most die)
    "literals": ("""
rule c0: (count ?n ?acc) if ?n == 0 => ?acc
rule c1: (count ?n ?acc) => (count {?n - 1} {?acc + ?n * 7919})
rule l0: (lits 0) => e
rule l1: (lits ?n) if ?n > 0 => (c {?n * 1000003} (lits {?n - 1}))
rule sum0: (sum e) => 0
rule sum1: (sum (c ?v ?rest)) => (plus ?v (sum ?rest))
rule plus: (plus ?a ?b) if const(?a), const(?b) => {?a + ?b}
""", "(count 40000 0) (sum (lits 15000)) (count 20000 3) (lits 3)"),
    # free constructors of arity 20, in inputs and targets, matched and rebuilt
    "arity 20": (f"""
rule b0: (mk 0) => nil
rule b1: (mk ?n) if ?n > 0 => (big {{?n*1}} {{?n*2}} {{?n*3}} {{?n*4}} {{?n*5}} {{?n*6}} {{?n*7}} {{?n*8}} {{?n*9}} \
{{?n*10}} {{?n*11}} {{?n*12}} {{?n*13}} {{?n*14}} {{?n*15}} {{?n*16}} {{?n*17}} {{?n*18}} {{?n*19}} (mk {{?n - 1}}))
rule sw0: (swap nil) => nil
rule sw1: (swap (big {WIDE})) => (big {' '.join(reversed(WIDE.split()[:-1]))} (swap ?x19))
rule len0: (len nil) => 0
rule len1: (len (big {WIDE})) => (inc (len ?x19))
rule inc: (inc ?n) if const(?n) => {{?n + 1}}
""", "(len (swap (mk 2500))) (len (mk 2500)) (swap (big " + " ".join(map(str, range(19))) + " nil)) (swap (mk 2))"),
    # arity-0 constructors and arity-0 defined operators
    "arity 0": ("""
rule z0: (zs 0) => nil
rule z1: (zs ?n) if ?n > 0 => (cons a (cons b (cons nil (cons start (zs {?n - 1})))))
rule st: start => (len (cons a (cons b nil)))
rule len0: (len nil) => 0
rule len1: (len (cons ?x ?xs)) => (inc (len ?xs))
rule inc: (inc ?n) if const(?n) => {?n + 1}
""", "(len (zs 12000)) start a nil (cons start (zs 1)) (zs 12000)"),
}


@pytest.mark.parametrize("name", COLLECTOR_PROGRAMS)
def test_collector_programs_equal_the_interpreter(engine: Engine, name: str) -> None:
    rules, terms = COLLECTOR_PROGRAMS[name]
    both(engine, rules, parsed(terms))
    stats = arena_stats(engine, rules, parsed(terms))
    assert stats["collections"] >= 1, stats


@pytest.mark.parametrize("opt_level", [0, 3])
def test_collector_at_other_optimisation_levels(engine: Engine, opt_level: int) -> None:
    rules, terms = COLLECTOR_PROGRAMS["naive reverse"]
    rs, native = native_of(engine, rules, opt_level)
    g1, g2 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
    assert_same(native.rewrite(g1, g1.parse(terms), max_memory=0), Interpreter(rs).rewrite(g2, g2.parse(terms)), rs)


def test_later_roots_reuse_earlier_results_across_collections(engine: Engine) -> None:
    """Many roots in one call: later ones repeat earlier ones' work (memo, shared input rows) and garbage
    collections run in between, so the earlier results (held in `out`) and the input rows' normal forms
    (held in `nf`) must survive being moved."""
    def build(g: TermGraph) -> list[int]:
        roots = []
        for k in range(30):
            roots += g.parse(f"(mkk {k % 7 * 20} 1) (rev (mkk {40 + k % 5 * 30} {k % 3})) "
                             f"(pair (rev (mkk {k % 7 * 20} 1)) (mk 140))")
        return roots

    native, _ = both(engine, LISTS, build)
    assert native.steps.count(0) > 40  # repeats really were free
    assert arena_stats(engine, LISTS, build)["collections"] >= 3


def test_input_rows_normal_forms_survive_collections(engine: Engine) -> None:
    """One shared input subterm, used by a first root and again by roots that run after many collections."""
    shared = "(rev (mk 120))"
    terms = f"{shared} (rev (mk 400)) (pair {shared} {shared}) (rev (mk 401)) (rev {shared}) {shared}"
    native, _ = both(engine, LISTS, parsed(terms))
    assert native.steps[2] == native.steps[5] == 0
    assert arena_stats(engine, LISTS, parsed(terms))["collections"] >= 3


GROWING = """
rule p0: (plus 0 ?m) => ?m
rule p1: (plus (s ?n) ?m) => (s (plus ?n ?m))
rule d0: (dbl 0) => 0
rule d1: (dbl (s ?n)) => (s (s (dbl ?n)))
"""


def test_a_term_that_only_grows_is_not_copied_again(engine: Engine) -> None:
    """Every node stays live (numerals built one s at a time: 100k in the input, 200k more built). The
    first collection keeps nearly all it finds, so when the space is full again it grows instead of copying
    all that once more: one collection, where growing after each would take two (64k words, then 512k)."""
    terms = f"(dbl {numeral(100_000)})"
    native, _ = both(engine, GROWING, parsed(terms))
    stats = arena_stats(engine, GROWING, parsed(terms))
    assert stats["collections"] == 1, stats
    assert stats["heap_cap"] >= 8 * 512 * 1024, stats


def test_a_term_that_grows_then_garbage_under_a_tight_cap(engine: Engine) -> None:
    """After a collection that kept nearly all (a 20k numeral), the space fills with garbage (reversing a
    list): it grows instead of collecting, unless the memory cap refuses: then it collects, as it would have
    anyway. Both give the interpreter's normal form."""
    rules = GROWING + LISTS
    terms = f"(plus {numeral(20_000)} (len (rev (mk 600))))"
    rs, native = native_of(engine, rules)
    expected = Interpreter(rs).rewrite(*graph_and_roots(rs, terms))
    for cap, collections in ((0, 1), (12 << 20, 2)):
        assert_same(native.rewrite(*graph_and_roots(rs, terms), max_memory=cap), expected, rs)
        g, roots = graph_and_roots(rs, terms)
        stats = raw_rewrite(native, columns_of(g), roots, cap=cap).stats
        assert stats["collections"] == collections, (cap, stats)


def graph_and_roots(rs: RuleSet, terms: str) -> tuple[TermGraph, list[int]]:
    g = TermGraph(rs.make_signature())
    return g, g.parse(terms)


def test_a_node_larger_than_the_space(engine: Engine) -> None:
    """A free constructor of arity 3 * INITIAL_WORDS in the input: the space grows past what a collection
    alone can free; then targets rebuild it."""
    rules = LISTS + "rule un: (unwrap (box ?x)) => ?x\nrule re: (rebox ?x) => (boxed (rev (mk 50)) ?x)"
    width = 3 * INITIAL_WORDS

    def build(g: TermGraph) -> list[int]:
        wide = g.app_named("wide", [g.lit(i) for i in range(width)])
        return [g.app_named("rebox", [wide]), g.app_named("unwrap", [g.app_named("box", [wide])]),
                *g.parse("(rev (mk 300))")]

    native, _ = both(engine, rules, build)
    assert native.graph.arities[native.outcomes[1]] == width  # type: ignore[index]


DIVIDES = """rule dv_sz: (dv (s ?x) z ?p) => (dv (s ?x) ?p ?p)
rule dv_ss: (dv (s ?x) (s ?k) ?p) => (dv ?x ?k ?p)
rule dv_zz: (dv z z ?p) => true
rule dv_zs: (dv z (s ?k) ?p) => false
"""


def test_a_loop_entered_through_an_untracked_call(engine: Engine) -> None:
    """dv_ss's call passes a part of dv's first argument: it is not tracked (farm/semantics/callgraph.py). A loop
    entered through it (dv (s z) z z) is caught one call later than one entered by a tracked call, the same way in
    the native code as in the interpreter; a long division without a loop is unaffected."""
    rs = ruleset_of(DIVIDES)
    assert untracked_calls(rs) == {(1, rs.rules[1].target)}
    def peano(n: int) -> str:
        return "(s " * n + "z" + ")" * n

    terms = f"(dv (s (s z)) (s z) z) (dv (s z) z z) (dv {peano(3000)} {peano(7)} {peano(7)})"
    native, _ = both(engine, DIVIDES, parsed(terms))
    assert [type(o).__name__ for o in native.outcomes[:2]] == ["RewriteCycle"] * 2
    assert native.steps[:2] == [3, 1]
    assert native.graph.to_text(native.outcomes[2]) == "false"  # type: ignore[arg-type]


def test_memoised_operators_across_collections(engine: Engine) -> None:
    rules = LISTS + """
rule f0: (fib 0) => 0
rule f1: (fib 1) => 1
rule fn: (fib ?n) if ?n > 1 => (add (fib {?n - 1}) (fib {?n - 2}) (len (rev (mkk 20 ?n))))
rule a: (add ?a ?b ?c) if const(?a), const(?b) => {?a + ?b}
rule t: (tak ?x ?y ?z) if ?y < ?x => (tak (tak {?x - 1} ?y ?z) (tak {?y - 1} ?z ?x) (tak {?z - 1} ?x ?y))
rule t2: (tak ?x ?y ?z) => (keep ?z (rev (mkk 10 (t ?x ?y ?z))))
rule k: (keep ?z ?l) => ?z
rule swap [bidirectional]: (sw (p ?x ?y)) => (sw (q ?y ?x))
"""
    terms = "(fib 300) (tak 18 12 6) (sw (p a (rev (mk 200)))) (fib 299) (tak 18 12 6) (fib 320) (sw (q b a))"
    native, _ = both(engine, rules, parsed(terms))
    assert isinstance(native.outcomes[2], RewriteCycle) and isinstance(native.outcomes[6], RewriteCycle)
    assert native.steps[3] == native.steps[4] == 0
    assert arena_stats(engine, rules, parsed(terms))["collections"] >= 2


SHARING = LISTS + """
rule same: (eq ?x ?x) => true
rule diff: (eq ?x ?y) => false
rule chk: (chk ?n) => (eq (mk ?n) (rev (rev (mk ?n))))
rule chkk: (chkk ?n ?t) => (eq (mkk ?n ?t) (rev (rev (mkk ?n ?t))))
rule orphan: (orphan ?n) => (after (mk ?n) (len (cons q (mk ?n))))
rule after: (after ?l ?k) => (all (rev (mk 700)) (eq (cons r ?l) (rev (rev (cons r ?l))))
                                 (eq (cons q ?l) (rev (rev (cons q ?l)))) (eq (cons r ?l) (cons r (rev (rev ?l)))))
rule all: (all ?junk true true true) => true
"""


def test_equal_terms_are_one_node_however_built(engine: Engine) -> None:
    """Nonlinear rules compare node ids, so they see any node built twice. The same lists are built bottom-up on
    fresh nodes (found again through their children's parent words), rebuilt after collections (parent words
    moved), and over a child whose registered parent was collected (then through the table)."""
    terms = "(chk 3) (chk 700) (chkk 200 (mk 30)) (orphan 40) (orphan 500) (chk 0) (chkk 1 nil)"
    native, _ = both(engine, SHARING, parsed(terms))
    assert [native.graph.to_text(o) for o in native.outcomes] == ["true"] * 7  # type: ignore[arg-type]
    assert arena_stats(engine, SHARING, parsed(terms))["collections"] >= 3


# ---- 2. the memo when it is full

COUNT = """
rule c0: (count 0 ?acc) => ?acc
rule c1: (count ?n ?acc) if ?n > 0 => (count {?n - 1} {?acc + 1})
rule cb: (count (two ?a ?b) ?acc) => (pair (count ?a ?acc) (count ?b ?acc))
"""  # cb never fires: it makes `count` a branching recursion, so memoised (docs/rules.md, "Memo")


def test_full_memo_of_calls_in_progress_by_hand(engine: Engine) -> None:
    """`count` nests one memoised call per step. Past MAX_MEMO_ENTRIES calls in progress a call is not
    remembered; when the memo is full, its finished entries are dropped. Expected steps derived by hand
    (the interpreter takes minutes here: its memo scans all entries on every call past the limit)."""
    m = MAX_MEMO_ENTRIES
    n = m + 30_000
    rs, native = native_of(engine, COUNT)
    g = TermGraph(rs.make_signature())
    roots = g.parse(f"(count {n} 0) (count {n - 5} 5) (count 10 0) (count {n - 1} 1) (count {n - m} {m}) "
                    f"(count {n - m - 1} {m + 1}) (count {n - 7} 7)")
    result = native.rewrite(g, roots, 10**8, 0)
    assert result.texts() == [str(n)] * 2 + ["10"] + [str(n)] * 4
    # 1: n + 1 calls, the first m remembered (count(n - k, k), k < m). 2: a hit (k = 5).
    # 3: 11 calls; the memo is full: its finished entries go first. 4: k = 1 .. n, none remembered any more;
    # it claims k = 1 .. m - 11, drops root 3's 11 finished entries, claims k .. m. 5: k = m, a hit.
    # 6: k = m + 1 was not remembered: n - m steps; the memo was full of finished entries (k = 1 .. m): all
    # dropped, k = m + 1 .. n remembered. 7: k = 7 was dropped: n - 6 steps.
    assert result.steps == [n + 1, 0, 11, n, 0, n - m, n - 6]
    assert result.firings == [5, sum(result.steps) - 5, 0]


def test_full_memo_of_finished_calls_equals_the_interpreter(engine: Engine) -> None:
    """More than MAX_MEMO_ENTRIES sibling memoised calls (input rows): the memo fills with finished
    entries and drops them; a later root repeats some of the calls."""
    rules = """
rule sq: (sq ?x) if ?x < 0 => (sqd {?x * ?x})
rule sqw: (sq (wrap ?x)) => (sq (wrap (wrap ?x)))
rule sqb: (sq (two ?a ?b)) => (pair (sq ?a) (sq ?b))
rule via: (via ?x) => (sq ?x)
rule via2: (via2 ?x) => (sq ?x)
"""
    n = MAX_MEMO_ENTRIES + 1000

    def build(g: TermGraph) -> list[int]:
        return [g.app_named("t", [g.app_named("sq", [g.lit(-i)]) for i in range(1, n + 1)]),
                g.app_named("u1", [g.app_named("via", [g.lit(-i)]) for i in range(1, 3000)]),
                g.app_named("u2", [g.app_named("via2", [g.lit(-i)]) for i in range(n, n - 5000, -1)])]

    native, _ = both(engine, rules, build)
    # 1: n calls; at the (m+1)-th the memo is full of finished entries: all dropped. 2: all misses (sq and via).
    # 3: the 1,000 calls root 1 remembered last are hits, the other 4,000 misses.
    assert native.steps == [n, 2 * 2999, 5000 + 4000]


# ---- 3. conditions whose evaluation collects

CONDITIONS = LISTS + """
rule c1: (chk (pair ?a (box ?b ?c)) ?n) if (len (rev (mk ?n))) = 0 => bad
rule c2: (chk (pair ?a (box ?b ?c)) ?n) if (len (rev (mk ?n))) = ?n, (len (rev (mk {?n + 1}))) = {?n + 1} \
=> (res ?a ?b ?c (pair ?a (box ?b ?c)) (rev (mk 3)))
rule c3: (chk ?p ?n) => (other ?p)
rule c4: (chk2 (pair ?a (box ?b ?c)) ?n) if (len (rev (mk ?n))) = 1 => bad
rule c5: (chk2 (pair ?a (box ?b ?c)) ?n) if (len (rev (mk ?n))) <> ?n => bad2
rule c6: (chk2 (pair ?a (box ?b ?c)) ?n) => (res3 ?c ?b ?a)
rule c7: (chk2 (pair ?a ?d) ?n) => (res2 ?a ?d)
rule c8: (chk3 (pair (box ?a ?a) ?b) ?n) if (len (rev (mk ?n))) = 0 => bad
rule c9: (chk3 (pair (box ?a ?b) ?b) ?n) if (len (rev (mk ?n))) = ?n => (res3 ?a ?b (box ?b ?a))
rule c10: (chk3 ?p ?n) => (other ?p)
rule st: (start ?n) => (chk (pair (mk ?n) (box (mk {?n + 1}) (rev (mk 5)))) ?n)
rule st2: (start2 ?n) => (chk2 (pair (mk ?n) (box (mk {?n + 1}) (rev (mk 5)))) ?n)
rule st3: (start3 ?n) => (chk3 (pair (box (mk 4) (mk ?n)) (mk ?n)) ?n)
"""


def test_conditions_that_collect_then_more_matching(engine: Engine) -> None:
    """Each condition runs a reverse that collects; then the same rule's other guards, the `otherwise`
    path and later rules read the arguments' inner nodes, which moved, and the targets use variables bound
    before the collections."""
    terms = ("(chk (pair (f 1 2) (box (g 3) (h 4))) 300) (start 250) (start2 250) (chk2 (pair x (box y z)) 300) "
             "(chk2 (pair x (bax y z)) 300) (chk (pair x y) 3) (start3 200) (chk3 (pair (box u y) y) 260) "
             "(chk3 (pair (box u u) y) 260)")
    native, _ = both(engine, CONDITIONS, parsed(terms))
    texts = native.texts()
    assert texts[0].startswith("(res (f 1 2) (g 3) (h 4) (pair (f 1 2) (box (g 3) (h 4)))")
    assert texts[4] == "(res2 x (bax y z))" and texts[7] == "(res3 u y (box y u))" and texts[8] == "(other " \
        "(pair (box u u) y))"
    assert arena_stats(engine, CONDITIONS, parsed(terms))["collections"] >= 10


# ---- 4. errors in the middle of a root, and the roots after it

ERRORS = LISTS + """
rule grow: (grow ?x) => (s (grow (s ?x)))
rule sp0: (spin a) => (spin b)
rule sp1: (spin b) => (spin a)
rule deep: (deep ?x) if (deep (s ?x)) = z => yes
rule gc: (gc ?n ?x) => (keep (len (rev (mkk ?n ?x))) ?x)
rule keep: (keep ?n ?x) => (kk ?n ?x)
rule loopy: (loopy ?n) => (pair (rev (mk ?n)) (loopy {?n + 1}))
rule spin2: (spin2 ?n) => (pair (len (rev (mk ?n))) (spin2 ?n))
"""


def test_errors_mid_root_leave_later_roots_correct(engine: Engine) -> None:
    """Fuel, a cycle and conditions nested too deep end their own root in the middle of allocating work
    (frames on the shadow stack, memo entries in progress); the roots after them, which collect, are
    unaffected, and a root that repeats a failed one fails the same way."""
    terms = ("(gc 200 a) (loopy 50) (gc 201 b) (spin2 120) (gc 200 a) (deep z) (gc 202 c) (spin a) "
             "(rev (mk 150)) (loopy 50) (gc 203 d)")
    native, _ = both(engine, ERRORS, parsed(terms), fuel=60_000)
    kinds = [type(o) for o in native.outcomes]
    assert kinds[1] is FuelExhausted and kinds[9] is FuelExhausted and kinds[3] is RewriteCycle
    assert kinds[5] is ConditionsTooDeep and kinds[7] is RewriteCycle
    assert all(isinstance(native.outcomes[i], int) for i in (0, 2, 4, 6, 8, 10))
    assert native.steps[4] == 0 and native.steps[9] == native.steps[1] == 60_001
    assert arena_stats(engine, ERRORS, parsed(terms))["collections"] >= 3
    assert native.steps[5] == 0 and MAX_CONDITION_DEPTH == 1000


def test_calls_too_deep_then_the_next_root(engine: Engine) -> None:
    """`grow` nests MAX_CALL_DEPTH memoised calls, each on a new argument (so no cycle), past the memo's
    capacity of calls in progress; the next roots still rewrite. Steps by hand: each call fires once
    before it makes the next."""
    rs, native = native_of(engine, ERRORS)
    g = TermGraph(rs.make_signature())
    result = native.rewrite(g, g.parse("(keep 1 a) (grow z) (gc 300 b) (spin a)"), 10**8, 0)
    assert isinstance(result.outcomes[1], CallsTooDeep) and str(MAX_CALL_DEPTH) in str(result.outcomes[1])
    assert result.steps[1] == MAX_CALL_DEPTH
    assert result.texts()[0] == "(kk 1 a)" and result.texts()[2] == "(kk 300 b)"
    assert isinstance(result.outcomes[3], RewriteCycle)


STACK_PROBE = """
import json, sys
from pathlib import Path
import farm.runtime.loader
farm.runtime.loader.STACK_BYTES = int(sys.argv[1])  # before the first rewrite: the big-stack thread starts then
from farm.config import FarmConfig
from farm.cache.engine import Engine
from farm.semantics.interp import Interpreter
from farm.lang.terms import TermGraph
from tests.conftest import ruleset_of
from tests.test_runtime import ERRORS
rs = ruleset_of(ERRORS)
native = Engine(FarmConfig(cache_dir=Path(sys.argv[2]), opt_level=1)).load_in_memory(rs)
deep_list = "(app " + "(cons a " * 200_000 + "nil" + ")" * 200_000 + " nil)"
terms = ["(keep 1 a)", "(grow z)", "(gc 150 b)", deep_list, "(deep z)", "(keep 2 b)"]
def run(engine, terms):
    g = TermGraph(rs.make_signature())
    r = engine.rewrite(g, g.parse(" ".join(terms)), 10**7, 0)
    return [[type(o).__name__ if not isinstance(o, int) else r.graph.to_text(o)[:40] for o in r.outcomes],
            [str(o) for o in r.outcomes if not isinstance(o, int)], r.steps]
# the interpreter would nest MAX_CALL_DEPTH calls for (grow z): it runs the others
print(json.dumps([run(native, terms), run(Interpreter(rs), terms[:1] + terms[2:])]))
"""


def stack_probe(stack_bytes: int, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", STACK_PROBE, str(stack_bytes), str(cache)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def test_native_stack_check_with_a_small_stack(tmp_path: Path) -> None:
    """With an 8 MiB stack thread (set before the first rewrite of the process), deep recursion ends in
    CallsTooDeep naming the native stack (code -8), and the roots after it are right."""
    probe = stack_probe(8 << 20, tmp_path)
    assert probe.returncode == 0, probe.stderr[-3000:]
    (native, messages, steps), (interp, _, interp_steps) = json.loads(probe.stdout)
    assert native[1] == native[3] == "CallsTooDeep" and all("4.0 MiB native stack" in m for m in messages[:2])
    assert interp[2].startswith("(cons a (cons a")  # the interpreter has no native stack
    del native[1], steps[1], native[2], steps[2], interp[2], interp_steps[2]
    assert (native, steps) == (interp, interp_steps)
    assert native == ["(kk 1 a)", "(kk 150 b)", "ConditionsTooDeep", "(kk 2 b)"]


def test_a_stack_smaller_than_the_margin_is_still_checked(tmp_path: Path) -> None:
    probe = stack_probe(3 << 20, tmp_path)
    assert probe.returncode == 0, f"exit {probe.returncode}: {probe.stderr[-2000:]}"
    assert json.loads(probe.stdout)[0][0][1] == "CallsTooDeep"


# ---- memory caps

CAPPED = LISTS + """
rule fib0: (fib 0) => 0
rule fib1: (fib 1) => 1
rule fibn: (fib ?n) if ?n > 1 => (add (fib {?n - 1}) (fib {?n - 2}))
rule add: (add ?a ?b) if const(?a), const(?b) => {?a + ?b}
rule big0: (big 0 ?t) => ?t
rule big1: (big ?n ?t) if ?n > 0 => (big {?n - 1} (pair ?t ?n))
"""


@pytest.mark.parametrize("cap", [1, 1 << 20, 1_600_000, 1_700_000, 2_000_000, 2_500_000, 3_000_000, 5_000_000,
                                 9_000_000, 17_000_000, 33_000_000])
def test_memory_caps_end_in_a_clear_error_and_the_next_rewrite_works(engine: Engine, cap: int) -> None:
    rs, native = native_of(engine, CAPPED)
    terms = "(rev (mk 1500)) (fib 3000) (big 150000 z) (rev (mk 10))"
    g = TermGraph(rs.make_signature())
    try:
        result = native.rewrite(g, g.parse(terms), 10**8, cap)
    except ArenaOutOfMemory as exc:
        assert exc.cap == cap and f"FARM_MAX_MEMORY={cap}" in str(exc)
    else:  # under the cap the native runtime may drop memo entries: the same normal forms, maybe more steps
        g2 = TermGraph(rs.make_signature())
        reference = Interpreter(rs).rewrite(g2, g2.parse(terms), 10**8, 0)
        common = TermGraph(rs.make_signature())
        assert outcome_keys(result, common) == outcome_keys(reference, common)
    g = TermGraph(rs.make_signature())
    after = native.rewrite(g, g.parse("(rev (mk 300)) (fib 40)"), 10**8, 0)
    assert after.texts()[1] == "102334155" and after.steps[0] == 301 + 300 * 301 // 2 + 300 + 1


# ---- 5. bad input

def columns(*cols: list[int]) -> tuple[array, array, array, array]:
    """ops, arities, values, kids in the ABI's widths (32, 32, 64, 32 bits)."""
    ops, arities, values, kids = (array(code, c) for code, c in zip(
        (ID_TYPECODE, ID_TYPECODE, VALUE_TYPECODE, ID_TYPECODE), cols))
    return ops, arities, values, kids


def test_bad_columns_are_refused_before_any_work(engine: Engine) -> None:
    rs, native = native_of(engine, "rule r: (f ?x ?y) => (g ?y ?x)\nrule q: (k ?x) => ?x")
    names = [name for name, _ in rs.signature]
    f = names.index("f")
    free = 40  # a free constructor: any id past the ruleset's

    good = raw_rewrite(native, columns([-1, -1, f], [0, 0, 2], [7, 8, 0], [0, 1]), [2])
    assert good.code == 0 and good.out[0] >= 0 and good.info == [1, 0]
    bad: dict[str, tuple[tuple[array, array, array, array], list[int]]] = {
        "arity differs from the ruleset": (columns([-1, -1, f], [0, 0, 1], [7, 8, 0], [0, 1]), [2]),
        "child not earlier": (columns([-1, -1, f], [0, 0, 2], [7, 8, 0], [0, 2]), [2]),
        "child is itself": (columns([free], [1], [0], [0]), [0]),
        "negative child": (columns([-1, -1, f], [0, 0, 2], [7, 8, 0], [0, -1]), [2]),
        "operator below -1": (columns([-1, -2, f], [0, 0, 2], [7, 8, 0], [0, 1]), [2]),
        "operator -2^31": (columns([-1, -2**31, f], [0, 0, 2], [7, 8, 0], [0, 1]), [2]),
        "huge arity": (columns([-1, -1, free], [0, 0, 2**31 - 1], [7, 8, 0], [0, 1]), [2]),
        "negative arity": (columns([-1, -1, free], [0, 0, -1], [7, 8, 0], [0, 1]), [2]),
        "arity -2^31": (columns([-1, -1, free], [0, 0, -2**31], [7, 8, 0], [0, 1]), [2]),
        "negative child offset": (columns([-1, -1, free], [0, 0, 2], [7, 8, -1], [0, 1]), [2]),
        "children past the end": (columns([-1, -1, free], [0, 0, 2], [7, 8, 1], [0, 1]), [2]),
        "huge child offset": (columns([-1, -1, free], [0, 0, 2], [7, 8, 2**62], [0, 1]), [2]),
        "negative root": (columns([-1, -1, f], [0, 0, 2], [7, 8, 0], [0, 1]), [-1]),
        "root past the rows": (columns([-1, -1, f], [0, 0, 2], [7, 8, 0], [0, 1]), [2, 3]),
    }
    for what, (cols, roots) in bad.items():
        # rows is always the columns' true length: claiming more made the library read past the arrays, so
        # "root past the rows" passed or failed with whatever lay there
        result = raw_rewrite(native, cols, roots, rows=len(cols[0]))
        assert (what, result.code) == (what, ERR_INPUT)
        assert result.info == [0] * (2 * len(roots))  # no work was done
    short = raw_rewrite(native, columns([-1, free], [0, 1], [0, 0], [0]), [1], n_kids=-1)
    assert short.code == ERR_INPUT
    top = raw_rewrite(native, columns([2**31 - 1], [0], [0], []), [0])
    assert top.code == 0


def test_a_negative_row_count_is_bad_input(engine: Engine) -> None:
    _, native = native_of(engine, "rule q: (k ?x) => ?x")
    assert raw_rewrite(native, columns([-1], [0], [0], []), [], rows=-5).code == ERR_INPUT


def test_bad_graphs_through_the_loader_are_term_errors(engine: Engine) -> None:
    rs, native = native_of(engine, "rule r: (f ?x ?y) => (g ?y ?x)")
    g = TermGraph(rs.make_signature())
    x = g.lit(1)
    wrong = g.app(g.signature.declare("f", 2), [x])  # f/2 applied to one child: the columns say arity 1
    with pytest.raises(TermError, match="code -5"):
        native.rewrite(g, [wrong])
    g.kid_ids[-1] = len(g.ops)  # the child is now a later row
    with pytest.raises(TermError):
        native.rewrite(g, [wrong])
    g = TermGraph(rs.make_signature())
    assert native.rewrite(g, g.parse("(f 1 2)")).texts() == ["(g 2 1)"]  # the library is fine afterwards
    other = TermGraph()
    other.signature.declare("f", 3)
    with pytest.raises(TermError, match="arity 2 in the ruleset, 3"):
        native.rewrite(other, [other.app(0, [other.lit(1)] * 3)])


@pytest.mark.parametrize("terms", ["(f a) (h b)", "(f 1)"])
def test_results_may_use_operators_the_input_graph_never_declared(engine: Engine, terms: str) -> None:
    rs, native = native_of(engine, "rule r: (f ?x) => (g ?x)")
    g1, g2 = TermGraph(), TermGraph()  # not rs.make_signature(): the graph knows f but not g
    expected = Interpreter(rs).rewrite(g2, g2.parse(terms)).texts()
    assert native.rewrite(g1, g1.parse(terms)).texts() == expected


def test_graphs_with_their_own_signature_order(engine: Engine) -> None:
    """A graph that declares the ruleset's operators in another order, with free constructors between."""
    rs, native = native_of(engine, LISTS)
    terms = "(zz (cons q nil)) (len (rev (cons 1 (cons q (mk 30))))) (rev (mk 200)) (app (mk 2) (cons q nil))"
    g1, g2 = TermGraph(), TermGraph()
    for g in (g1, g2):
        for name, arity in [("zz", 1), ("cons", 2), ("q", 0), ("nil", 0), ("w", 1), ("inc", 1), ("zz", 1)] + \
                [(n, a) for n, a in reversed(rs.signature)]:
            g.signature.declare(name, arity)
    assert_same(native.rewrite(g1, g1.parse(terms), max_memory=0), Interpreter(rs).rewrite(g2, g2.parse(terms)), rs)


# ---- 6. random rulesets and terms

CHURN = """
rule zw0: (zwide nil) => nil
rule zw1: (zwide (cons ?x ?xs)) => (zbig ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x ?x (zwide ?xs))
rule zch: (zchurn ?l) => (zfirst (zwide ?l))
rule zf0: (zfirst nil) => nil
rule zf1: (zfirst (zbig ?a ?b ?c ?d ?e ?f ?g ?h ?i ?j ?k ?l ?m ?n ?o ?p ?q ?r ?s ?t)) => ?a
"""
CHURN_LENGTH = 4000
FUEL = CHURN_LENGTH + 100  # a churn root takes CHURN_LENGTH + 3 steps


def churn_root(g: TermGraph, salt: int) -> int:
    """(zchurn (cons 0 (cons 1 ...))): CHURN_LENGTH steps that allocate ~80,000 words of garbage."""
    lst = g.app_named("nil")
    for i in range(CHURN_LENGTH, 0, -1):
        lst = g.app_named("cons", [g.lit(i * 10 + salt), lst])
    return g.app_named("zchurn", [lst])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(random_rule(), min_size=1, max_size=6), st.integers(0, 2**32))
def test_random_rulesets_with_collections_equal_the_interpreter(engine: Engine, patterns: list[TopologicalPattern],
                                                                seed: int) -> None:
    """Random rules and terms, with roots that collect in between (the random roots' inputs and results
    move): normal forms, errors, firings and steps per root agree."""
    try:
        rs = transduce_patterns(parse_rules(CHURN, "churn.farm").patterns + patterns, warn=False)
    except RuleError:
        assume(False)
        return
    native = engine.load_in_memory(rs, opt_level=0)
    gen = TermGenerator(rs, random.Random(seed))
    g0 = TermGraph(rs.make_signature())
    texts = [g0.to_text(gen.term(g0)) for _ in range(24)]

    def build(g: TermGraph) -> list[int]:
        roots = [g.parse(t)[0] for t in texts[:12]]
        roots += [churn_root(g, 1)]
        roots += [g.parse(t)[0] for t in texts[12:]]
        roots += [churn_root(g, 2)]
        return roots + [g.parse(t)[0] for t in texts]

    g1, g2 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
    assert_same(native.rewrite(g1, build(g1), FUEL, 0), Interpreter(rs).rewrite(g2, build(g2), FUEL, 0), rs)
    g3 = TermGraph(rs.make_signature())
    # at least the first churn collects, moving the first twelve roots' inputs and results
    assert raw_rewrite(native, (g3.ops, g3.arities, g3.vals, g3.kid_ids), build(g3), fuel=FUEL).stats[
        "collections"] >= 1


# ---- 7. determinism and threads

def test_the_same_rewrite_twice_gives_the_same_steps_and_firings(engine: Engine) -> None:
    rules = ERRORS
    terms = "(rev (mk 300)) (gc 100 a) (spin a) (loopy 3) (deep z)"
    rs, native = native_of(engine, rules)
    results = []
    for _ in range(3):
        g = TermGraph(rs.make_signature())
        r = native.rewrite(g, g.parse(terms), 20_000, 0)
        results.append((r.texts(), r.steps, r.firings))
    assert results[0] == results[1] == results[2]


def test_threads_rewrite_at_once(engine: Engine) -> None:
    """Each rewrite owns its arena: two threads (each with its own big-stack thread) rewriting at once with
    one library get what one thread alone gets."""
    rs, native = native_of(engine, LISTS)
    terms = "(len (rev (mk 500))) (rev (mk 200))"
    g = TermGraph(rs.make_signature())
    alone = native.rewrite(g, g.parse(terms), max_memory=0)
    got: list[Any] = []

    def work() -> None:
        for _ in range(3):
            g = TermGraph(rs.make_signature())
            r = native.rewrite(g, g.parse(terms), max_memory=0)
            got.append((r.texts(), r.steps, r.firings))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [(alone.texts(), alone.steps, alone.firings)] * 6


# ---- 8. exporting the normal forms

MEMO_LISTS = SHARING + """
rule mm0: (mkm 0) => nil
rule mm1: (mkm ?n) if ?n > 0 => (cons (w ?n) (mkm {?n - 1}))
rule mmb: (mkm (two ?a ?b)) => (pair (mkm ?a) (mkm ?b))
"""  # mmb never fires: it makes `mkm` a branching recursion, so memoised (a list it built outlives the call)


def collect_on(native: NativeRuleset, arena: Any, g: TermGraph, raw: Raw) -> RewriteResult:
    """The loader's farm_mark and farm_export of a raw rewrite's results on this arena."""
    return native._collect(arena, g, None, array("q", raw.out), array("q", raw.info), 10_000_000, 0)


def test_rewriting_again_after_an_export_on_the_same_arena(engine: Engine) -> None:
    """farm_mark numbers the nodes in their parent words, so the next farm_rewrite on the arena must put them
    right first. The lists the first call built and exported come back from the memo (`mkm`) in the second,
    which builds the same lists anew (`mk`): a nonlinear rule sees one node, not two."""
    rs, native = native_of(engine, MEMO_LISTS)
    first_terms = "(mkm 300) (cons a (mkm 40))"
    g0 = TermGraph(rs.make_signature())
    alone = native.rewrite(g0, g0.parse(first_terms), max_memory=0).texts()
    with fresh_arena(native) as arena:
        g1 = TermGraph(rs.make_signature())
        first = rewrite_on(native, arena, columns_of(g1), g1.parse(first_terms))
        assert first.code == 0 and collect_on(native, arena, g1, first).texts() == alone
        assert arena.contents.marked > 0
        g2 = TermGraph(rs.make_signature())
        second = rewrite_on(native, arena, columns_of(g2), g2.parse(
            "(mkm 300) (eq (mk 300) (mkm 300)) (eq (cons a (mk 40)) (cons a (mkm 40))) (eq (rev (rev (mk 300))) "
            "(mkm 300))"))
        assert second.code == 0 and arena.contents.marked == 0
        assert second.info[0] == 0  # (mkm 300) is the first call's list, from the memo
        assert collect_on(native, arena, g2, second).texts()[1:] == ["true"] * 3


def test_a_large_export_on_mapped_columns(engine: Engine) -> None:
    """Normal forms of more than MAPPED_MIN_BYTES come back over mapped columns (farm/runtime/mapped.py): the
    graph walks them, rewrites again natively from them, and copies them into arrays when Python adds a node
    to it; a small export keeps arrays."""
    rs, native = native_of(engine, COLLECTOR_PROGRAMS["numerals"][0])
    g = TermGraph(rs.make_signature())
    result = native.rewrite(g, g.parse("(mul (num 300) (num 300)) (num 2)"), max_memory=0)
    graph, (big, two) = result.graph, result.outcomes
    assert isinstance(big, int) and isinstance(two, int)
    columns = (graph.ops, graph.vals, graph.arities, graph.kid_ids)
    assert all(isinstance(column, memoryview) for column in columns)
    assert 16 * len(graph) + 4 * len(graph.kid_ids) >= MAPPED_MIN_BYTES
    assert graph.depth(big) == 90_001 and graph.to_text(two) == "(s (s 0))"
    assert native.rewrite(graph, [big, two]).texts() == result.texts()
    root = graph.app_named("plus", [two, two])
    assert all(isinstance(column, array) for column in (graph.ops, graph.vals, graph.arities, graph.kid_ids))
    assert graph.depth(big) == 90_001 and graph.to_text(root) == "(plus (s (s 0)) (s (s 0)))"
    assert native.rewrite(graph, [root]).texts() == ["(s (s (s (s 0))))"]
    small = TermGraph(rs.make_signature())
    assert isinstance(native.rewrite(small, small.parse("(num 3)")).graph.ops, array)


def _resident_pages(address: int, length: int) -> list[bool]:
    """Which pages of the mapping at `address` are in memory (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    pages = -(-length // mmap.PAGESIZE)
    vector = ctypes.create_string_buffer(pages)
    assert libc.mincore(address, length, vector) == 0, os.strerror(ctypes.get_errno())
    return [byte & 1 == 1 for byte in vector.raw[:pages]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bounded columns are a Linux mapping")
def test_farm_populate_populates_each_column_from_its_lead_to_its_cap_while_an_export_runs(engine: Engine) -> None:
    """farm_populate populates the pages of rows [POPULATE_LEAD, rows) of the row columns and [POPULATE_LEAD,
    children) of the child column, and no others (the export's own, below the lead; past the caps), while
    the arena's `exporting` is set; not at all once it is clear."""
    _, native = native_of(engine, COLLECTOR_PROGRAMS["numerals"][0])
    rows, children, bound = 300_000, 200_000, 1 << 20
    layout = [(ID_TYPECODE, bound), (VALUE_TYPECODE, bound), (ID_TYPECODE, bound), (ID_TYPECODE, 2 * bound)]
    for exporting in (0, 1):
        columns = bounded_columns(layout)
        assert columns is not None
        base, length = address(columns[0]), address(columns[-1]) + 4 * len(columns[-1]) - address(columns[0])
        with fresh_arena(native) as arena:
            arena.contents.exporting = exporting
            reached = native.lib.farm_populate(arena, *map(address, columns), rows, children)
        resident = _resident_pages(base, length)
        if not exporting:
            assert reached == POPULATE_LEAD and not any(resident)
            continue
        assert reached >= rows and any(resident), "the kernel refuses MADV_POPULATE_WRITE (before Linux 5.14)?"
        expected = [False] * len(resident)
        for column, width, cells in zip(columns, (4, 8, 4, 4), (rows, rows, rows, children)):
            first, last = address(column) - base + POPULATE_LEAD * width, address(column) - base + cells * width
            for page in range(-(-first // mmap.PAGESIZE), -(-last // mmap.PAGESIZE)):
                expected[page] = True
        assert resident == expected


@pytest.mark.parametrize("path", ["bounded", "exact"])
def test_a_large_export_is_the_same_with_its_pages_populated_alongside(engine: Engine, path: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An export into fresh mapped columns (bounded, or exact after farm_mark) runs on the library's thread
    while this one populates their pages ahead of it (farm_populate): the same graph as exporting alone into
    arrays after farm_mark."""
    rs, native = native_of(engine, COLLECTOR_PROGRAMS["numerals"][0])
    if path == "exact":
        monkeypatch.setattr(mapped, "BOUNDED_MIN_BYTES", 1 << 60)
    reached: list[int] = []
    populate = native.lib.farm_populate

    def counted(*args: Any) -> int:
        reached.append(populate(*args))
        return reached[-1]

    monkeypatch.setattr(native.lib, "farm_populate", counted)
    terms = f"(plus {numeral(200_000)} (num 3)) (mul (num 40) (num 40))"
    g = TermGraph(rs.make_signature())
    result = native.rewrite(g, g.parse(terms), max_memory=0)
    assert len(reached) == 1 and reached[0] > POPULATE_LEAD, "the export ended before a page was populated"
    graph = result.graph
    assert all(isinstance(column, memoryview) for column in (graph.ops, graph.vals, graph.arities, graph.kid_ids))
    columns, roots = marked_export(native, rs, terms)
    assert columns == [graph.ops, graph.vals, graph.arities, graph.kid_ids]
    assert result.outcomes == roots and graph.depth(result.outcomes[0]) == 200_004  # type: ignore[arg-type]


def test_export_without_mark_numbers_the_nodes_itself_a_million_levels_deep(engine: Engine) -> None:
    """farm_export after farm_mark writes what the mark numbered; called alone it numbers the nodes itself,
    with the same columns, on a numeral a million levels deep (the walk's stack is explicit). Exporting and
    marking again find everything numbered and change nothing."""
    rs, native = native_of(engine, COLLECTOR_PROGRAMS["numerals"][0])
    terms = f"(plus {numeral(1_000_000)} (num 3)) (num 3) (plus (num 2) (s (num 2)))"
    g = TermGraph(rs.make_signature())
    expected = native.rewrite(g, g.parse(terms), max_memory=0)  # bounded columns: farm_export alone
    graph = expected.graph
    assert graph.depth(expected.outcomes[0]) == 1_000_004  # type: ignore[arg-type]
    with fresh_arena(native) as arena:
        g2 = TermGraph(rs.make_signature())
        raw = rewrite_on(native, arena, columns_of(g2), g2.parse(terms))
        out = array("q", raw.out)
        for _ in range(2):
            columns = [loader._zeros(len(graph), ID_TYPECODE), loader._zeros(len(graph)),
                       loader._zeros(len(graph), ID_TYPECODE), loader._zeros(len(graph.kid_ids), ID_TYPECODE)]
            mapped = loader._zeros(len(out))
            count = native.lib.farm_export(arena, len(out), loader._ptr(out), loader._ptr(mapped),
                                           *map(loader._ptr, columns))
            assert count == len(graph) and list(mapped) == expected.outcomes
            assert columns == [graph.ops, graph.vals, graph.arities, graph.kid_ids]
        sizes = loader._zeros(2)
        assert native.lib.farm_mark(arena, len(out), loader._ptr(out), loader._ptr(sizes)) == 0
        assert list(sizes) == [len(graph), len(graph.kid_ids)]


FORKED_REWRITE = """
import os, sys, time
from pathlib import Path
from farm.cache.engine import Engine
from farm.config import FarmConfig
from farm.lang.terms import TermGraph
from tests.conftest import ruleset_of
ruleset = ruleset_of("op z/0, s/1, add/2\\nrule a0: (add z ?y) => ?y\\nrule a1: (add (s ?x) ?y) => (s (add ?x ?y))\\n")
native = Engine(FarmConfig(cache_dir=Path(sys.argv[1]))).load_in_memory(ruleset, opt_level=0)

def once() -> str:
    graph = TermGraph(ruleset.make_signature())
    return native.rewrite(graph, graph.parse("(add (s (s z)) (s z))"), 100).texts()[0]

print("parent", once(), flush=True)  # the parent's big-stack thread runs it
pid = os.fork()
if pid == 0:
    print("child", once(), flush=True)
    os._exit(0)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
os.waitpid(pid, 0)
print("the child hung", flush=True)
sys.exit(3)
"""


def test_a_forked_child_rewrites_natively_after_its_parent_did(tmp_path: Path) -> None:
    """A process that forks after rewriting natively (a pre-forking server, a pool): the child's rewrites run on a
    big-stack thread of its own. The parent's does not exist in the child; handing it the job hung for ever."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_REWRITE)
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")], capture_output=True, text=True,
                         timeout=120, check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.stdout.split("\n")[:2] == ["parent (s (s (s z)))", "child (s (s (s z)))"], run.stdout + run.stderr
    assert run.returncode == 0, run.stderr[-2000:]
