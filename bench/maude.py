"""farm against Maude, side by side in one run, on classic rewriting benchmarks (issue 11's yardstick).

Each program is written twice, as a farm rule file and as a Maude functional module with the same
equations (Peano naturals `z`/`s`, the same case split and conditions), and run on the same input. Each side
runs in a child process of its own, so its peak resident memory is that whole process's (ru_maxrss from
wait4): farm's child takes the real path (Engine: the artifact from the cache, loaded, one rewrite), Maude's is
`maude` itself. Every farm run is bounded: a fuel, a memory cap (FARM_MAX_MEMORY), a watchdog on the child's
resident memory and a wall timeout; a side that fails is a row with its error, never a crashed bench.

Each side runs REPEAT times per program (--repeat), alternately, and its fastest run is reported (these
machines are shared and noisy; every run's time is kept in the JSON). Reported per program: farm's rewrite
steps, time inside the library (RewriteResult.seconds["rewrite"]) and
end to end (import, rewrite, export), peak RSS; Maude's rewrite count, cpu time (`set show timing on`) and
peak RSS; the ratio farm library time / Maude cpu; and whether the normal forms are identical. A small result
is compared as printed (Maude's `f(a, b)` read as `(f a b)`); a large one as its prefix token sequence with
every Peano numeral read as its value (Maude's printer stops partway through deep terms, so Maude computes
that sequence itself, in a second, untimed run). Each program is also checked on a small input: farm's
reference interpreter against Maude.

Standalone: `FARM_CACHE_DIR=... python bench/maude.py [--only KEY] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/maude.py` from anywhere
    sys.path.insert(0, str(ROOT))

from farm.cache.engine import Engine  # noqa: E402
from farm.config import FarmConfig, size  # noqa: E402
from farm.errors import FarmError  # noqa: E402
from farm.lang.dsl import parse_rules  # noqa: E402
from farm.lang.terms import LIT, TermGraph  # noqa: E402
from farm.lang.transduce import RuleSet, transduce_patterns  # noqa: E402
from farm.semantics.interp import Interpreter  # noqa: E402

PATTERN_ID = "maude-bench"
FUEL = 10**10  # far above every program's steps: a bound, not a budget
MAX_MEMORY = "4G"  # FARM_MAX_MEMORY of farm's child
RSS_SLACK = 2 << 30  # the watchdog kills a child whose resident memory passes the cap by this much
UNCAPPED_RSS_LIMIT = 8 << 30  # and, under --max-memory 0 (no cap), one past this
TIMEOUT_S = 300.0  # wall clock per child, either side
REPEAT = 3  # runs of each side per program, alternating; the fastest of each is compared
SMALL_FUEL = 10**7


def peano(n: int) -> str:
    return "(s " * n + "z" + ")" * n


def maude_peano(n: int) -> str:
    return "s(" * n + "z" + ")" * n


def numeral(n: int) -> str:
    """n as a small farm term: Maude's parser takes seconds on a numeral a thousand levels deep (and grows
    as the cube of the depth), so a large one is written as (plus (times q 100) r)."""
    return peano(n) if n <= 200 else f"(plus (times {peano(n // 100)} {peano(100)}) {peano(n % 100)})"


PEANO_RULES = """
rule plus_z: (plus z ?y) => ?y
rule plus_s: (plus (s ?x) ?y) => (s (plus ?x ?y))
rule times_z: (times z ?y) => z
rule times_s: (times (s ?x) ?y) => (plus ?y (times ?x ?y))
"""
PEANO_MAUDE = """
  sort N .
  op z : -> N [ctor] .
  op s : N -> N [ctor] .
  op plus : N N -> N .
  op times : N N -> N .
  vars X Y W : N .
  eq plus(z, Y) = Y .
  eq plus(s(X), Y) = s(plus(X, Y)) .
  eq times(z, Y) = z .
  eq times(s(X), Y) = plus(Y, times(X, Y)) .
"""

# Lists of naturals: gen(n) = [n-1, .., 0], append, naive reverse.
LIST_RULES = """
rule gen_z: (gen z) => nil
rule gen_s: (gen (s ?n)) => (cons ?n (gen ?n))
rule app_nil: (app nil ?l) => ?l
rule app_cons: (app (cons ?x ?l1) ?l2) => (cons ?x (app ?l1 ?l2))
rule rev_nil: (rev nil) => nil
rule rev_cons: (rev (cons ?x ?l)) => (app (rev ?l) (cons ?x nil))
"""
LIST_MAUDE = """
  sort L .
  op nil : -> L [ctor] .
  op cons : N L -> L [ctor] .
  op gen : N -> L .
  op app : L L -> L .
  op rev : L -> L .
  vars L1 L2 : L .
  eq gen(z) = nil .
  eq gen(s(X)) = cons(X, gen(X)) .
  eq app(nil, L2) = L2 .
  eq app(cons(X, L1), L2) = cons(X, app(L1, L2)) .
  eq rev(nil) = nil .
  eq rev(cons(X, L1)) = app(rev(L1), cons(X, nil)) .
"""

# Comparisons of naturals, as functions to Maude's Bool.
ORDER_RULES = """
rule le_z: (le z ?y) => true
rule le_sz: (le (s ?x) z) => false
rule le_ss: (le (s ?x) (s ?y)) => (le ?x ?y)
rule lt_xz: (lt ?x z) => false
rule lt_zs: (lt z (s ?y)) => true
rule lt_ss: (lt (s ?x) (s ?y)) => (lt ?x ?y)
"""
ORDER_MAUDE = """
  op le : N N -> Bool .
  op lt : N N -> Bool .
  eq le(z, Y) = true .
  eq le(s(X), z) = false .
  eq le(s(X), s(Y)) = le(X, Y) .
  eq lt(X, z) = false .
  eq lt(z, s(Y)) = true .
  eq lt(s(X), s(Y)) = lt(X, Y) .
"""

# A pseudo-random list: rnd(n, x) = [x, next(x), ..], next(x) = (x + 37) mod 97, the remainder counted
# down structurally: md(x, k, r, m) with k = m - r.
RANDOM_RULES = f"""
rule rnd_z: (rnd z ?x) => nil
rule rnd_s: (rnd (s ?n) ?x) => (cons ?x (rnd ?n (next ?x)))
rule next: (next ?x) => (md (plus ?x {peano(37)}) {peano(97)} z {peano(97)})
rule md_z: (md z ?k ?r ?m) => ?r
rule md_wrap: (md (s ?x) (s z) ?r ?m) => (md ?x ?m z ?m)
rule md_s: (md (s ?x) (s (s ?k)) ?r ?m) => (md ?x (s ?k) (s ?r) ?m)
"""
RANDOM_MAUDE = f"""
  op rnd : N N -> L .
  op next : N -> N .
  op md : N N N N -> N .
  vars K R M : N .
  eq rnd(z, X) = nil .
  eq rnd(s(W), X) = cons(X, rnd(W, next(X))) .
  eq next(X) = md(plus(X, {maude_peano(37)}), {maude_peano(97)}, z, {maude_peano(97)}) .
  eq md(z, K, R, M) = R .
  eq md(s(X), s(z), R, M) = md(X, M, z, M) .
  eq md(s(X), s(s(K)), R, M) = md(X, s(K), s(R), M) .
"""


@dataclass(frozen=True)
class Program:
    key: str  # --only KEY
    title: str
    farm_rules: str
    maude_module: str  # the body of `fmod PROG is ... endfm`, after PEANO_MAUDE
    term: str  # farm's syntax; translated for Maude by `maude_term`
    small_term: str  # the same computation on a small input: farm's interpreter against Maude
    # "text": normal forms compared as printed; "flat": as prefix token sequences with Peano numerals by value
    # (for numerals and large results: Maude's printer stops partway through a numeral hundreds of thousands
    # of levels deep, seen: 109,238 of 1.45 M characters).
    check: str = "text"
    # When farm's run fails (today's native code runs out of memory on reverse 10,000), a second run stopped by
    # this much fuel still measures its steps per second.
    rate_fuel: int | None = None


def sorting(key: str, title: str, rules: str, maude: str, op: str, length: int) -> Program:
    return Program(key, title, PEANO_RULES + LIST_RULES + ORDER_RULES + RANDOM_RULES + rules,
                   LIST_MAUDE + ORDER_MAUDE + RANDOM_MAUDE + maude,
                   f"({op} (rnd {numeral(length)} {peano(5)}))", f"({op} (rnd {peano(12)} {peano(5)}))", "flat")


PROGRAMS = [
    Program("reverse-1000", "reverse a list of 1,000 Peano naturals (naive reverse)", PEANO_RULES + LIST_RULES,
            LIST_MAUDE, f"(rev (gen {peano(1000)}))", f"(rev (gen {peano(12)}))"),
    Program("reverse-10000", "reverse a list of 10,000 Peano naturals (naive reverse)", PEANO_RULES + LIST_RULES,
            LIST_MAUDE, f"(rev (gen {numeral(10_000)}))", f"(rev (gen (times {peano(3)} {peano(4)})))", "flat",
            rate_fuel=5_000_000),
    Program("factorial", "factorial 9 (Peano)", PEANO_RULES + """
rule fact_z: (fact z) => (s z)
rule fact_s: (fact (s ?n)) => (times (s ?n) (fact ?n))
""", """
  op fact : N -> N .
  eq fact(z) = s(z) .
  eq fact(s(X)) = times(s(X), fact(X)) .
""", f"(fact {peano(9)})", f"(fact {peano(5)})", "flat"),
    Program("fibonacci", "Fibonacci 25 (Peano; farm's memo makes it linear)", PEANO_RULES + """
rule fib_z: (fib z) => z
rule fib_one: (fib (s z)) => (s z)
rule fib_s: (fib (s (s ?n))) => (plus (fib (s ?n)) (fib ?n))
""", """
  op fib : N -> N .
  eq fib(z) = z .
  eq fib(s(z)) = s(z) .
  eq fib(s(s(X))) = plus(fib(s(X)), fib(X)) .
""", f"(fib {peano(25)})", f"(fib {peano(10)})", "flat"),
    Program("sieve", "sieve of Eratosthenes: the primes up to 1,000 (Peano, trial division by each prime)",
            PEANO_RULES + LIST_RULES + """
rule range_z: (range ?i z) => nil
rule range_s: (range ?i (s ?k)) => (cons ?i (range (s ?i) ?k))
rule sieve_nil: (sieve nil) => nil
rule sieve_cons: (sieve (cons ?p ?l)) => (cons ?p (sieve (filter ?p ?l)))
rule filter_nil: (filter ?p nil) => nil
rule filter_cons: (filter ?p (cons ?x ?l)) => (keep (dv ?x ?p ?p) ?x (filter ?p ?l))
rule keep_t: (keep true ?x ?l) => ?l
rule keep_f: (keep false ?x ?l) => (cons ?x ?l)
rule dv_zz: (dv z z ?p) => true
rule dv_zs: (dv z (s ?k) ?p) => false
rule dv_sz: (dv (s ?x) z ?p) => (dv (s ?x) ?p ?p)
rule dv_ss: (dv (s ?x) (s ?k) ?p) => (dv ?x ?k ?p)
""", LIST_MAUDE + """
  op range : N N -> L .
  op sieve : L -> L .
  op filter : N L -> L .
  op keep : Bool N L -> L .
  op dv : N N N -> Bool .
  vars K P : N .
  eq range(X, z) = nil .
  eq range(X, s(K)) = cons(X, range(s(X), K)) .
  eq sieve(nil) = nil .
  eq sieve(cons(P, L1)) = cons(P, sieve(filter(P, L1))) .
  eq filter(P, nil) = nil .
  eq filter(P, cons(X, L1)) = keep(dv(X, P, P), X, filter(P, L1)) .
  eq keep(true, X, L1) = L1 .
  eq keep(false, X, L1) = cons(X, L1) .
  eq dv(z, z, P) = true .
  eq dv(z, s(K), P) = false .
  eq dv(s(X), z, P) = dv(s(X), P, P) .
  eq dv(s(X), s(K), P) = dv(X, K, P) .
""", f"(sieve (range (s (s z)) (times {peano(27)} {peano(37)})))", f"(sieve (range (s (s z)) {peano(40)}))",
            "flat"),
    sorting("bubble-sort", "bubble sort of 400 pseudo-random Peano naturals below 97", """
rule len_nil: (len nil) => z
rule len_cons: (len (cons ?x ?l)) => (s (len ?l))
rule bsort: (bsort ?l) => (passes (len ?l) ?l)
rule passes_z: (passes z ?l) => ?l
rule passes_s: (passes (s ?n) ?l) => (passes ?n (bpass ?l))
rule bpass_nil: (bpass nil) => nil
rule bpass_one: (bpass (cons ?x nil)) => (cons ?x nil)
rule bpass_two: (bpass (cons ?x (cons ?y ?l))) => (bswap (le ?x ?y) ?x ?y ?l)
rule bswap_t: (bswap true ?x ?y ?l) => (cons ?x (bpass (cons ?y ?l)))
rule bswap_f: (bswap false ?x ?y ?l) => (cons ?y (bpass (cons ?x ?l)))
""", """
  op len : L -> N .
  op bsort : L -> L .
  op passes : N L -> L .
  op bpass : L -> L .
  op bswap : Bool N N L -> L .
  eq len(nil) = z .
  eq len(cons(X, L1)) = s(len(L1)) .
  eq bsort(L1) = passes(len(L1), L1) .
  eq passes(z, L1) = L1 .
  eq passes(s(W), L1) = passes(W, bpass(L1)) .
  eq bpass(nil) = nil .
  eq bpass(cons(X, nil)) = cons(X, nil) .
  eq bpass(cons(X, cons(Y, L1))) = bswap(le(X, Y), X, Y, L1) .
  eq bswap(true, X, Y, L1) = cons(X, bpass(cons(Y, L1))) .
  eq bswap(false, X, Y, L1) = cons(Y, bpass(cons(X, L1))) .
""", "bsort", 400),
    sorting("merge-sort", "merge sort of 8,000 pseudo-random Peano naturals below 97", """
rule msort_nil: (msort nil) => nil
rule msort_one: (msort (cons ?x nil)) => (cons ?x nil)
rule msort_two: (msort (cons ?x (cons ?y ?l))) => (merge (msort (cons ?x (evens ?l))) (msort (cons ?y (odds ?l))))
rule evens_nil: (evens nil) => nil
rule evens_one: (evens (cons ?x nil)) => (cons ?x nil)
rule evens_two: (evens (cons ?x (cons ?y ?l))) => (cons ?x (evens ?l))
rule odds_nil: (odds nil) => nil
rule odds_one: (odds (cons ?x nil)) => nil
rule odds_two: (odds (cons ?x (cons ?y ?l))) => (cons ?y (odds ?l))
rule merge_nil: (merge nil ?l) => ?l
rule merge_cons_nil: (merge (cons ?x ?l) nil) => (cons ?x ?l)
rule merge_cons: (merge (cons ?x ?l1) (cons ?y ?l2)) => (mergeif (le ?x ?y) ?x ?l1 ?y ?l2)
rule mergeif_t: (mergeif true ?x ?l1 ?y ?l2) => (cons ?x (merge ?l1 (cons ?y ?l2)))
rule mergeif_f: (mergeif false ?x ?l1 ?y ?l2) => (cons ?y (merge (cons ?x ?l1) ?l2))
""", """
  op msort : L -> L .
  op evens : L -> L .
  op odds : L -> L .
  op merge : L L -> L .
  op mergeif : Bool N L N L -> L .
  eq msort(nil) = nil .
  eq msort(cons(X, nil)) = cons(X, nil) .
  eq msort(cons(X, cons(Y, L1))) = merge(msort(cons(X, evens(L1))), msort(cons(Y, odds(L1)))) .
  eq evens(nil) = nil .
  eq evens(cons(X, nil)) = cons(X, nil) .
  eq evens(cons(X, cons(Y, L1))) = cons(X, evens(L1)) .
  eq odds(nil) = nil .
  eq odds(cons(X, nil)) = nil .
  eq odds(cons(X, cons(Y, L1))) = cons(Y, odds(L1)) .
  eq merge(nil, L2) = L2 .
  eq merge(cons(X, L1), nil) = cons(X, L1) .
  eq merge(cons(X, L1), cons(Y, L2)) = mergeif(le(X, Y), X, L1, Y, L2) .
  eq mergeif(true, X, L1, Y, L2) = cons(X, merge(L1, cons(Y, L2))) .
  eq mergeif(false, X, L1, Y, L2) = cons(Y, merge(cons(X, L1), L2)) .
""", "msort", 8000),
    sorting("quicksort", "quicksort of 4,000 pseudo-random Peano naturals below 97 (conditional rules)", """
rule qsort_nil: (qsort nil) => nil
rule qsort_cons: (qsort (cons ?p ?l)) => (app (qsort (lows ?p ?l)) (cons ?p (qsort (highs ?p ?l))))
rule lows_nil: (lows ?p nil) => nil
rule lows_keep: (lows ?p (cons ?x ?l)) if (lt ?x ?p) = true => (cons ?x (lows ?p ?l))
rule lows_drop: (lows ?p (cons ?x ?l)) if (lt ?x ?p) = false => (lows ?p ?l)
rule highs_nil: (highs ?p nil) => nil
rule highs_keep: (highs ?p (cons ?x ?l)) if (lt ?x ?p) = false => (cons ?x (highs ?p ?l))
rule highs_drop: (highs ?p (cons ?x ?l)) if (lt ?x ?p) = true => (highs ?p ?l)
""", """
  op qsort : L -> L .
  op lows : N L -> L .
  op highs : N L -> L .
  var P : N .
  eq qsort(nil) = nil .
  eq qsort(cons(P, L1)) = app(qsort(lows(P, L1)), cons(P, qsort(highs(P, L1)))) .
  eq lows(P, nil) = nil .
  ceq lows(P, cons(X, L1)) = cons(X, lows(P, L1)) if lt(X, P) = true .
  ceq lows(P, cons(X, L1)) = lows(P, L1) if lt(X, P) = false .
  eq highs(P, nil) = nil .
  ceq highs(P, cons(X, L1)) = cons(X, highs(P, L1)) if lt(X, P) = false .
  ceq highs(P, cons(X, L1)) = highs(P, L1) if lt(X, P) = true .
""", "qsort", 4000),
    Program("takeuchi", "Takeuchi tak(15, 10, 5) (Peano, conditional rules; saturating predecessor)",
            PEANO_RULES + ORDER_RULES + """
rule p_z: (p z) => z
rule p_s: (p (s ?x)) => ?x
rule tak_le [priority 1]: (tak ?x ?y ?z) if (le ?x ?y) = true => ?y
rule tak_gt: (tak (s ?x) ?y ?z) if (le (s ?x) ?y) = false
  => (tak (tak ?x ?y ?z) (tak (p ?y) ?z (s ?x)) (tak (p ?z) (s ?x) ?y))
""", ORDER_MAUDE + """
  op p : N -> N .
  op tak : N N N -> N .
  eq p(z) = z .
  eq p(s(X)) = X .
  ceq tak(X, Y, W) = Y if le(X, Y) = true .
  ceq tak(s(X), Y, W) = tak(tak(X, Y, W), tak(p(Y), W, s(X)), tak(p(W), s(X), Y)) if le(s(X), Y) = false .
""", f"(tak {peano(15)} {peano(10)} {peano(5)})", f"(tak {peano(8)} {peano(4)} {peano(2)})", "flat"),
    Program("hanoi", "towers of Hanoi, 18 discs: the list of 262,143 moves", """
rule mapp_nil: (mapp mnil ?l) => ?l
rule mapp_cons: (mapp (mcons ?m ?l1) ?l2) => (mcons ?m (mapp ?l1 ?l2))
rule hanoi_z: (hanoi z ?a ?b ?c) => mnil
rule hanoi_s: (hanoi (s ?n) ?a ?b ?c) => (mapp (hanoi ?n ?a ?c ?b) (mcons (move ?a ?b) (hanoi ?n ?c ?b ?a)))
""", """
  sorts Peg Move ML .
  op left : -> Peg [ctor] .
  op middle : -> Peg [ctor] .
  op right : -> Peg [ctor] .
  op move : Peg Peg -> Move [ctor] .
  op mnil : -> ML [ctor] .
  op mcons : Move ML -> ML [ctor] .
  op mapp : ML ML -> ML .
  op hanoi : N Peg Peg Peg -> ML .
  vars A B C : Peg .
  var MV : Move .
  vars ML1 ML2 : ML .
  eq mapp(mnil, ML2) = ML2 .
  eq mapp(mcons(MV, ML1), ML2) = mcons(MV, mapp(ML1, ML2)) .
  eq hanoi(z, A, B, C) = mnil .
  eq hanoi(s(X), A, B, C) = mapp(hanoi(X, A, C, B), mcons(move(A, B), hanoi(X, C, B, A))) .
""", f"(hanoi {peano(18)} left right middle)", f"(hanoi {peano(4)} left right middle)", "flat"),
    Program("symbolic", "symbolic: d/dx of e_9, e_k+1 = e_k * e_k + (e_k + x) (a DAG: e_k used three "
            "times), evaluated mod 7 at x = 3", PEANO_RULES + RANDOM_RULES + """
rule bld_z: (bld z ?e) => ?e
rule bld_s: (bld (s ?n) ?e) => (bld ?n (add (mul ?e ?e) (add ?e x)))
rule d_x: (d x) => one
rule d_one: (d one) => zero
rule d_zero: (d zero) => zero
rule d_add: (d (add ?a ?b)) => (add (d ?a) (d ?b))
rule d_mul: (d (mul ?a ?b)) => (add (mul (d ?a) ?b) (mul ?a (d ?b)))
rule ev_x: (ev x ?v) => ?v
rule ev_one: (ev one ?v) => (s z)
rule ev_zero: (ev zero ?v) => z
rule ev_add: (ev (add ?a ?b) ?v) => (mod7 (plus (ev ?a ?v) (ev ?b ?v)))
rule ev_mul: (ev (mul ?a ?b) ?v) => (mod7 (times (ev ?a ?v) (ev ?b ?v)))
rule mod7: (mod7 ?x) => (md ?x (s (s (s (s (s (s (s z))))))) z (s (s (s (s (s (s (s z))))))))
""", """
  sorts E L .
  op nil : -> L [ctor] .
  op cons : N L -> L [ctor] .
  op x : -> E [ctor] .
  op one : -> E [ctor] .
  op zero : -> E [ctor] .
  op add : E E -> E [ctor] .
  op mul : E E -> E [ctor] .
  op bld : N E -> E .
  op d : E -> E .
  op ev : E N -> N .
  op mod7 : N -> N .
  vars E1 E2 : E .
  var V : N .
  eq bld(z, E1) = E1 .
  eq bld(s(X), E1) = bld(X, add(mul(E1, E1), add(E1, x))) .
  eq d(x) = one .
  eq d(one) = zero .
  eq d(zero) = zero .
  eq d(add(E1, E2)) = add(d(E1), d(E2)) .
  eq d(mul(E1, E2)) = add(mul(d(E1), E2), mul(E1, d(E2))) .
  eq ev(x, V) = V .
  eq ev(one, V) = s(z) .
  eq ev(zero, V) = z .
  eq ev(add(E1, E2), V) = mod7(plus(ev(E1, V), ev(E2, V))) .
  eq ev(mul(E1, E2), V) = mod7(times(ev(E1, V), ev(E2, V))) .
  eq mod7(X) = md(X, s(s(s(s(s(s(s(z))))))), z, s(s(s(s(s(s(s(z)))))))) .
""" + RANDOM_MAUDE, f"(ev (d (bld {peano(9)} x)) {peano(3)})", f"(ev (d (bld {peano(3)} x)) {peano(3)})", "flat"),
    Program("permutations", "all 40,320 permutations of [7, .., 0] (non-linear rule over a fallback: priorities)",
            PEANO_RULES + LIST_RULES + """
rule perms_nil: (perms nil) => (lcons nil lnil)
rule perms_cons: (perms (cons ?x ?l)) => (choose (cons ?x ?l) (cons ?x ?l))
rule choose_nil: (choose nil ?all) => lnil
rule choose_cons: (choose (cons ?x ?r) ?all) => (lapp (mapcons ?x (perms (remove ?x ?all))) (choose ?r ?all))
rule remove_nil: (remove ?x nil) => nil
rule remove_hit [priority 1]: (remove ?x (cons ?x ?l)) => ?l
rule remove_miss: (remove ?x (cons ?y ?l)) => (cons ?y (remove ?x ?l))
rule mapcons_nil: (mapcons ?x lnil) => lnil
rule mapcons_cons: (mapcons ?x (lcons ?p ?ps)) => (lcons (cons ?x ?p) (mapcons ?x ?ps))
rule lapp_nil: (lapp lnil ?ls) => ?ls
rule lapp_cons: (lapp (lcons ?p ?ps) ?ls) => (lcons ?p (lapp ?ps ?ls))
""", LIST_MAUDE + """
  sort LL .
  op lnil : -> LL [ctor] .
  op lcons : L LL -> LL [ctor] .
  op perms : L -> LL .
  op choose : L L -> LL .
  op remove : N L -> L .
  op mapcons : N LL -> LL .
  op lapp : LL LL -> LL .
  vars LS1 LS2 : LL .
  var L3 : L .
  eq perms(nil) = lcons(nil, lnil) .
  eq perms(cons(X, L1)) = choose(cons(X, L1), cons(X, L1)) .
  eq choose(nil, L3) = lnil .
  eq choose(cons(X, L1), L3) = lapp(mapcons(X, perms(remove(X, L3))), choose(L1, L3)) .
  eq remove(X, nil) = nil .
  eq remove(X, cons(X, L1)) = L1 .
  eq remove(X, cons(Y, L1)) = cons(Y, remove(X, L1)) [owise] .
  eq mapcons(X, lnil) = lnil .
  eq mapcons(X, lcons(L1, LS1)) = lcons(cons(X, L1), mapcons(X, LS1)) .
  eq lapp(lnil, LS2) = LS2 .
  eq lapp(lcons(L1, LS1), LS2) = lcons(L1, lapp(LS1, LS2)) .
""", f"(perms (gen {peano(8)}))", f"(perms (gen {peano(4)}))", "flat"),
]
BY_KEY = {program.key: program for program in PROGRAMS}


# --- translating between the two syntaxes -------------------------------------------------------------------

def maude_term(term: str) -> str:
    """(f a b) -> f(a, b): farm's S-expressions in Maude's prefix syntax."""
    out: list[str] = []
    for token in re.findall(r"\(|\)|[^\s()]+", term):
        if token == ")":
            out.append(")")
        elif token == "(":
            out.append("")  # the head follows: written as `head(`
        elif out and out[-1] == "":
            out[-1] = token + "("
        else:
            out.append(token)
    text = ""
    for piece in out:  # commas between siblings
        if text and not text.endswith("(") and piece != ")":
            text += ", "
        text += piece
    return text


def farm_text(maude: str) -> str:
    """Maude's printed normal form (f(a, b)) as farm prints it ((f a b))."""
    text = re.sub(r"([A-Za-z_][\w]*)\(", r"(\1 ", maude.replace(",", " "))
    return re.sub(r"\s+", " ", text).replace(" )", ")").strip()


_CTOR = re.compile(r"\bops?\s+([^:]+?)\s*:\s*([^->]*?)\s*->\s*(\w+)\s*\[ctor\]\s*\.")


def flat_module(module: str) -> str:
    """Maude equations for `fl`: a constructor term as its prefix token sequence (`'cons 3 'nil`), every Peano
    numeral as its value (a Nat), built from the module's own [ctor] declarations."""
    lines = ["  protecting NAT .", "  protecting QID .", "  sort Seq .", "  subsorts Nat Qid < Seq .",
             "  op eps : -> Seq .", "  op __ : Seq Seq -> Seq [assoc id: eps] .", "  op val : N Nat -> Nat .",
             "  op fl : N -> Seq .", "  var VA : Nat .", "  var VX : N .", "  eq val(z, VA) = VA .",
             "  eq val(s(VX), VA) = val(VX, VA + 1) .", "  eq fl(VX) = val(VX, 0) ."]
    sorts: set[str] = set()
    for names, args, sort in _CTOR.findall(PEANO_MAUDE + module):
        if sort == "N":
            continue
        if sort not in sorts:
            sorts.add(sort)
            lines.append(f"  op fl : {sort} -> Seq .")
        arg_sorts = args.split()
        for name in names.split():
            if not arg_sorts:
                lines.append(f"  eq fl({name}) = '{name} .")
                continue
            variables = [f"V{i}:{s}" for i, s in enumerate(arg_sorts)]
            lines.append(f"  eq fl({name}({', '.join(variables)})) = '{name} "
                         + " ".join(f"fl({v})" for v in variables) + " .")
    return "\n".join(lines) + "\n"


def flat_farm(graph: TermGraph, root: int) -> str:
    """`flat_module`'s sequence, from farm's normal form: prefix order, each shared node at each of its uses,
    Peano numerals by value (computed children first over the DAG, so no numeral is walked twice)."""
    names = graph.signature.names
    z_op, s_op = graph.signature.lookup("z"), graph.signature.lookup("s")
    value: dict[int, int] = {}
    for node in range(root + 1):  # children have smaller ids than parents
        op = graph.ops[node]
        if op == z_op:
            value[node] = 0
        elif op == s_op and graph.kids(node)[0] in value:
            value[node] = value[graph.kids(node)[0]] + 1
    tokens: list[str] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node in value:
            tokens.append(str(value[node]))
        elif graph.ops[node] == LIT:
            tokens.append(str(graph.vals[node]))
        else:
            tokens.append(names[graph.ops[node]])
            stack.extend(reversed(graph.kids(node)))
    return " ".join(tokens)


def normal_form(program: Program, graph: TermGraph, root: int) -> str:
    return flat_farm(graph, root) if program.check == "flat" else graph.to_text(root)


# --- child processes ----------------------------------------------------------------------------------------

@dataclass
class Child:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_kb: int  # ru_maxrss of the program (from wait4 in a small spawner: see _SPAWN)
    wall_s: float
    killed: str | None  # why the parent killed it: a timeout or the memory watchdog


# A small spawner between the bench and the program. Linux carries a process's resident high-water mark
# across exec (and a forked child starts with its parent's), so a program forked straight from the bench
# would report at least the bench's own size. This spawner (a bare interpreter, ~10 MB) forks it and reports
# its wait4 rusage, and its pid first, for the watchdog.
_SPAWN = """
import os, resource, sys
status, big_stack, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if big_stack == "1":
    resource.setrlimit(resource.RLIMIT_STACK, (resource.getrlimit(resource.RLIMIT_STACK)[1],) * 2)
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
with open(status, "w") as fh:
    fh.write(f"{pid}\\n")
_, code, usage = os.wait4(pid, 0)
with open(status, "a") as fh:
    fh.write(f"{os.waitstatus_to_exitcode(code)} {usage.ru_maxrss}\\n")
"""


def run_child(argv: list[str], timeout: float, rss_limit: int = 0, env: dict[str, str] | None = None,
              big_stack: bool = False) -> Child:
    """Run argv (through _SPAWN, in a session of its own) and return its exit code, output and peak resident
    memory; kill the session past `timeout` seconds or once the program holds more than `rss_limit` bytes
    resident (0: no watchdog). big_stack: the hard stack limit as the soft one (Maude recurses on deep terms).
    Output goes to files, not pipes: a normal form can be megabytes."""
    with tempfile.TemporaryDirectory() as name:
        status = Path(name) / "status"
        with open(Path(name) / "out", "w+") as out, open(Path(name) / "err", "w+") as err:
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _SPAWN, str(status), str(int(big_stack)),
                                     *argv], stdout=out, stderr=err, env=env, start_new_session=True)
            killed, program, high_water = None, 0, 0
            while proc.poll() is None:
                if not program:
                    program = int(_lines(status)[:1][0]) if _lines(status)[:1] else 0
                resident, peak = _memory(program) if program else (0, 0)
                high_water = max(high_water, peak)
                if killed is None:
                    if time.perf_counter() - start > timeout:
                        killed = f"timeout after {timeout:.0f} s"
                    elif rss_limit and resident > rss_limit:
                        killed = f"memory watchdog: {resident >> 20:,} MiB resident > {rss_limit >> 20:,} MiB"
                    if killed is not None:
                        os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.01)
            wall = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()[-4000:]
        final = _lines(status)[1:2]
    # no final line: the spawner was killed (by the watchdog) or failed, so it has the exit code
    returncode, peak_kb = (int(v) for v in final[0].split()) if final else (proc.returncode, high_water)
    return Child(returncode, stdout, stderr, max(peak_kb, high_water), wall, killed)


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.endswith(tuple("0123456789"))]
    except OSError:
        return []


def _memory(pid: int) -> tuple[int, int]:
    """(resident bytes, resident high-water KB) of a live process; zeros once it is gone."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    fields[line[:5]] = int(line.split()[1])
    except OSError:
        pass
    return fields.get("VmRSS", 0) * 1024, fields.get("VmHWM", 0)


def _child_failure(child: Child) -> str:
    if child.killed:
        return child.killed
    tail = child.stderr.strip().splitlines()[-1:] or [f"exit code {child.returncode}"]
    if child.returncode < 0:
        return f"killed by signal {-child.returncode} ({tail[0]})"
    return tail[0]


# --- farm's side --------------------------------------------------------------------------------------------

def ruleset(program: Program) -> RuleSet:
    parsed = parse_rules(program.farm_rules)
    return transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


def farm_child(key: str, fuel: int) -> dict[str, Any]:
    """In farm's child process: the Engine takes the artifact from the cache (FARM_CACHE_DIR, compiled by the
    parent), loads it and rewrites once under FARM_MAX_MEMORY and `fuel`."""
    program = BY_KEY[key]
    rules = ruleset(program)
    engine = Engine(FarmConfig.from_env())
    graph = TermGraph(rules.make_signature())
    roots = graph.parse(program.term)
    start = time.perf_counter()
    try:
        engine.compile(rules, PATTERN_ID)  # a cache hit, timed on its own; rewrite's own lookup is another
        cached = time.perf_counter()
        result = engine.rewrite(rules, graph, roots, PATTERN_ID, fuel=fuel, engine="native")
    except FarmError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    call_s = time.perf_counter() - cached
    outcome = result.outcomes[0]
    report: dict[str, Any] = {"steps": result.steps[0], "seconds": result.seconds, "cache_hit_s": cached - start,
                              "load_s": call_s - sum(result.seconds.values())}
    if isinstance(outcome, int):
        report["normal_form"] = normal_form(program, result.graph, outcome)
    else:
        report["error"] = f"{type(outcome).__name__}: {outcome}"
    return report


def run_farm(program: Program, cache_dir: Path, max_memory: str, timeout: float, fuel: int = FUEL) -> dict[str, Any]:
    """Compile (or find) the artifact here, then rewrite in a child process of its own."""
    rules = ruleset(program)
    config = FarmConfig.from_env()
    config.cache_dir = cache_dir
    try:
        Engine(config).compile(rules, PATTERN_ID)
    except FarmError as exc:
        return {"error": f"compile: {type(exc).__name__}: {exc}"}
    env = {**os.environ, "FARM_CACHE_DIR": str(cache_dir), "FARM_MAX_MEMORY": max_memory,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    cap = size(max_memory)
    child = run_child([sys.executable, str(Path(__file__).resolve()), "--farm-child", program.key,
                       "--fuel", str(fuel)], timeout,
                      cap + RSS_SLACK if cap else UNCAPPED_RSS_LIMIT, env)
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or child.killed or not lines:
        report: dict[str, Any] = {"error": _child_failure(child)}
    else:
        report = json.loads(lines[-1])
    report.update(peak_rss_kb=child.peak_rss_kb, process_s=child.wall_s)
    return report


# --- Maude's side -------------------------------------------------------------------------------------------

def maude_source(program: Program, command: str, flat: bool = False, graph: bool = False) -> str:
    settings = "set show timing on .\nset show advisories off .\n" + ("set print graph on .\n" if graph else "")
    extra = flat_module(program.maude_module) if flat else ""
    return f"{settings}fmod PROG is\n{extra}{PEANO_MAUDE}{program.maude_module}endfm\n{command}\nquit\n"


def run_maude(program: Program, tmp: Path, timeout: float, small: bool = False, flat_check: bool = True) \
        -> dict[str, Any]:
    """One timed run; for a "flat" program the normal form comes from a second, untimed run (the timed one
    prints its result as a graph: Maude's full print of a large result is megabytes), unless not
    `flat_check` (a repeated run: the first one checked it)."""
    term = maude_term(program.small_term if small else program.term)
    flat = program.check == "flat"
    timed = _maude(tmp, maude_source(program, f"red {term} .", graph=flat), timeout)
    if "error" in timed:
        return timed
    out = timed.pop("out")
    stats = re.search(r"rewrites: (\d+) in (\d+)ms cpu", out)
    if stats is None:
        return {**timed, "error": f"unexpected Maude output: {out[-500:]}"}
    report = {**timed, "rewrites": int(stats[1]), "cpu_s": int(stats[2]) / 1000}
    if flat and not flat_check:
        return report
    if flat:
        checked = _maude(tmp, maude_source(program, f"red fl({term}) .", flat=True), timeout)
        if "error" in checked:
            return {**report, "error": f"normal form: {checked['error']}"}
        result = _result(checked["out"])
        report["normal_form"] = None if result is None else " ".join(result.replace("'", "").split())
    else:
        result = _result(out)
        report["normal_form"] = None if result is None else farm_text(result)
    return report


def _maude(tmp: Path, source: str, timeout: float) -> dict[str, Any]:
    path = tmp / "prog.maude"
    path.write_text(source)
    child = run_child(["maude", "-no-banner", "-no-advise", str(path)], timeout, big_stack=True)
    if child.killed or child.returncode != 0:
        return {"error": _child_failure(child), "peak_rss_kb": child.peak_rss_kb}
    if "Warning:" in child.stdout or "Warning:" in child.stderr:
        warning = (child.stdout + child.stderr).split("Warning:", 1)[1].splitlines()[0]
        return {"error": f"Maude warning: {warning.strip()}", "peak_rss_kb": child.peak_rss_kb}
    return {"out": child.stdout, "peak_rss_kb": child.peak_rss_kb, "process_s": child.wall_s}


def _result(out: str) -> str | None:
    result = re.search(r"result [\w{}]+: (.*?)(?:\nBye|\Z)", out, re.DOTALL)
    return None if result is None else result[1].strip()


# --- the comparison -----------------------------------------------------------------------------------------

def small_check(program: Program, tmp: Path) -> dict[str, Any]:
    """farm's reference interpreter and Maude on the small input: the same normal form?"""
    rules = ruleset(program)
    graph = TermGraph(rules.make_signature())
    roots = graph.parse(program.small_term)
    result = Interpreter(rules).rewrite(graph, roots, SMALL_FUEL, 0)
    outcome = result.outcomes[0]
    interp = normal_form(program, graph, outcome) if isinstance(outcome, int) else f"error: {outcome}"
    maude = run_maude(program, tmp, 60.0, small=True)
    return {"interpreter_steps": result.steps[0], "maude_rewrites": maude.get("rewrites"),
            "same_normal_form": interp == maude.get("normal_form"), "interpreter_normal_form": interp[:200]}


def best(runs: list[dict[str, Any]], time_of: Callable[[dict[str, Any]], float | None]) -> dict[str, Any]:
    """The fastest of a side's runs (the machine is shared: the minimum is the least disturbed), with the
    largest peak RSS of them all and the times of every run; a failed run is the result when any failed."""
    failed = [r for r in runs if "error" in r]
    def seconds(run: dict[str, Any]) -> float:
        return time_of(run) or 0.0

    fastest: dict[str, Any] = failed[0] if failed else min(runs, key=seconds)
    chosen = dict(fastest)
    chosen["peak_rss_kb"] = max(r.get("peak_rss_kb", 0) for r in runs)
    chosen["run_ms"] = [_ms(time_of(r)) for r in runs]
    return chosen


def compare(programs: list[Program] = PROGRAMS, cache_dir: Path | None = None, max_memory: str = MAX_MEMORY,
            timeout: float = TIMEOUT_S, progress: Callable[[str], None] | None = None,
            repeat: int = REPEAT) -> dict[str, Any]:
    """Each program through farm (native, its own process) and Maude (its own process), alternately,
    `repeat` times each, one at a time; each side's fastest run is reported. {"skipped": why} when maude is
    not installed."""
    if shutil.which("maude") is None:
        return {"skipped": "maude is not installed (Debian package maude)"}
    cache = cache_dir or FarmConfig.from_env().cache_dir
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as name:
        for program in programs:
            if progress:
                progress(program.key)
            tmp = Path(name) / program.key
            tmp.mkdir()
            farm_runs, maude_runs = [], []
            for turn in range(repeat):
                farm_runs.append(run_farm(program, cache, max_memory, timeout))
                maude_runs.append(run_maude(program, tmp, timeout, flat_check=turn == 0))
            farm = best(farm_runs, lambda r: r.get("seconds", {}).get("rewrite"))
            maude = best(maude_runs, lambda r: r.get("cpu_s"))
            maude["normal_form"] = maude_runs[0].get("normal_form")
            if "error" in farm and program.rate_fuel:
                farm["partial"] = run_farm(program, cache, max_memory, timeout, program.rate_fuel)
            rows[program.key] = row(program, farm, maude, small_check(program, tmp))
    return rows


def row(program: Program, farm: dict[str, Any], maude: dict[str, Any], small: dict[str, Any]) -> dict[str, Any]:
    seconds = farm.get("seconds", {})
    library_s, steps = seconds.get("rewrite"), farm.get("steps")
    rewrites, cpu_s = maude.get("rewrites"), maude.get("cpu_s")
    ok = "error" not in farm and "error" not in maude
    return {
        "program": program.title, "check": program.check,
        "farm_error": farm.get("error"), "farm_steps": steps, "farm_runs_ms": farm.get("run_ms"),
        "maude_runs_ms": maude.get("run_ms"),
        "farm_library_ms": _ms(library_s), "farm_end_to_end_ms": _ms(sum(seconds.values()) if seconds else None),
        "farm_seconds": seconds, "farm_cache_hit_ms": _ms(farm.get("cache_hit_s")),
        "farm_load_ms": _ms(farm.get("load_s")),
        "farm_peak_rss_mb": farm.get("peak_rss_kb", 0) / 1024, "farm_process_s": farm.get("process_s"),
        "farm_steps_per_s": steps / library_s if steps and library_s and "error" not in farm else None,
        "maude_error": maude.get("error"), "maude_rewrites": rewrites, "maude_cpu_ms": _ms(cpu_s),
        "maude_peak_rss_mb": maude.get("peak_rss_kb", 0) / 1024,
        "maude_rewrites_per_s": rewrites / cpu_s if rewrites and cpu_s else None,
        "library_vs_maude": library_s / cpu_s if ok and library_s is not None and cpu_s else None,
        "same_normal_form": farm.get("normal_form") == maude.get("normal_form") if ok else None,
        "farm_partial_run": partial(farm.get("partial")),
        "small_input": small,
    }


def partial(farm: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fuel-bounded rerun of a failed program: its steps per second up to where the fuel stopped it."""
    if farm is None:
        return None
    library_s, steps = farm.get("seconds", {}).get("rewrite"), farm.get("steps")
    return {"steps": steps, "library_ms": _ms(library_s), "outcome": farm.get("error", "normal form"),
            "steps_per_s": steps / library_s if steps and library_s else None,
            "peak_rss_mb": farm.get("peak_rss_kb", 0) / 1024}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _cells(r: dict[str, Any]) -> list[str]:
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    part = r["farm_partial_run"]
    rate = num(r["farm_steps_per_s"] and r["farm_steps_per_s"] / 1e6, ".1f") if part is None else \
        f"{num(part['steps_per_s'] and part['steps_per_s'] / 1e6, '.1f')} (first {num(part['steps'], ',')} steps)"
    farm = [f"error: {_short(r['farm_error'])}", "", "", rate] if r["farm_error"] else [
        num(r["farm_steps"], ","), num(r["farm_library_ms"], ".1f"), num(r["farm_end_to_end_ms"], ".1f"), rate]
    maude = [f"error: {_short(r['maude_error'])}", "", ""] if r["maude_error"] else [
        num(r["maude_rewrites"], ","), num(r["maude_cpu_ms"], ".0f"),
        num(r["maude_rewrites_per_s"] and r["maude_rewrites_per_s"] / 1e6, ".1f")]
    ratio = ("n/a (Maude 0 ms)" if r["maude_cpu_ms"] == 0 else "-") if r["library_vs_maude"] is None \
        else f"{r['library_vs_maude']:.2f}"
    same = {True: "yes", False: "NO", None: "-"}[r["same_normal_form"]]
    small = "yes" if r["small_input"]["same_normal_form"] else "NO"
    return [*farm, f"{r['farm_peak_rss_mb']:,.0f}", *maude, f"{r['maude_peak_rss_mb']:,.0f}", ratio, same, small]


def _short(error: str) -> str:
    """An error for a table cell: its class and, for the memory cap, the cap (the JSON has it all)."""
    cap = re.search(r"\(([\d,.]+ MiB)\)", error)
    name = error.split(":", 1)[0]
    return f"{name} (cap {cap[1]})" if name == "ArenaOutOfMemory" and cap else error[:60]


HEADERS = ["farm steps", "farm library ms", "farm end-to-end ms", "farm Msteps/s", "farm peak RSS MB",
           "Maude rewrites", "Maude cpu ms", "Maude Mrw/s", "Maude peak RSS MB",
           "library / Maude cpu (goal <= 0.5)", "same normal form", "small input: interpreter = Maude"]


def markdown(rows: dict[str, Any]) -> str:
    if "skipped" in rows:
        return f"farm vs Maude: skipped ({rows['skipped']})"
    lines = ["| program | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for key, r in rows.items():
        lines.append(f"| {key}: {r['program']} | " + " | ".join(_cells(r)) + " |")
    return "\n".join(lines)


def print_table(rows: dict[str, Any]) -> None:
    if "skipped" in rows:
        print(markdown(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="farm (native) vs Maude 3.2, same run")
    table.add_column("program", no_wrap=True)
    for header in HEADERS:
        table.add_column(header, justify="right", overflow="fold")
    for key, r in rows.items():
        table.add_row(key, *_cells(r))
    Console(width=max(shutil.get_terminal_size().columns, 240)).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", choices=sorted(BY_KEY), help="run one program")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--max-memory", default=MAX_MEMORY, help="FARM_MAX_MEMORY of farm's child (default 4G)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="wall seconds per child process")
    parser.add_argument("--repeat", type=int, default=REPEAT,
                        help=f"runs of each side per program, the fastest compared (default {REPEAT})")
    parser.add_argument("--farm-child", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--fuel", type=int, default=FUEL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.farm_child:
        print(json.dumps(farm_child(args.farm_child, args.fuel)))
        return 0
    programs = [BY_KEY[args.only]] if args.only else PROGRAMS
    rows = compare(programs, max_memory=args.max_memory, timeout=args.timeout,
                   progress=lambda key: print(f"running {key}", file=sys.stderr), repeat=max(1, args.repeat))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
