"""farm against Maude, side by side in one run, on classic rewriting benchmarks (issue 11's yardstick).

Each program is written twice, as a farm rule file and as a Maude functional module with the same
equations, and run on the same input. Reported per program: farm's rewrite steps, time inside the library
and end to end (import, rewrite, export); Maude's rewrite count and cpu time (`set show timing on`); the
ratio of the two times; and whether the normal forms are identical (Maude's `f(a, b)` read as `(f a b)`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.config import FarmConfig
from farm.dsl import parse_rules
from farm.engine import Engine
from farm.terms import TermGraph
from farm.transduce import transduce_patterns

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
  vars X Y : N .
  eq plus(z, Y) = Y .
  eq plus(s(X), Y) = s(plus(X, Y)) .
  eq times(z, Y) = z .
  eq times(s(X), Y) = plus(Y, times(X, Y)) .
"""


@dataclass(frozen=True)
class Program:
    name: str
    farm_rules: str
    maude_module: str  # the body of `fmod PROG is ... endfm`, after PEANO_MAUDE
    term: str  # farm's syntax; translated for Maude by `maude_term`
    # A Peano result is compared by value: Maude's printer stops partway through a numeral hundreds of
    # thousands of levels deep (seen: 109,238 of 1.45 M characters), so it reports val(term) in a second run.
    numeral: bool = False


def peano(n: int) -> str:
    return "(s " * n + "z" + ")" * n


PROGRAMS = [
    Program("reverse a list of 1,000 Peano naturals (naive reverse)", PEANO_RULES + """
rule gen_z: (gen z) => nil
rule gen_s: (gen (s ?n)) => (cons ?n (gen ?n))
rule app_nil: (app nil ?l) => ?l
rule app_cons: (app (cons ?x ?l1) ?l2) => (cons ?x (app ?l1 ?l2))
rule rev_nil: (rev nil) => nil
rule rev_cons: (rev (cons ?x ?l)) => (app (rev ?l) (cons ?x nil))
""", """
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
""", f"(rev (gen {peano(1000)}))"),
    Program("factorial 9 (Peano)", PEANO_RULES + """
rule fact_z: (fact z) => (s z)
rule fact_s: (fact (s ?n)) => (times (s ?n) (fact ?n))
""", """
  op fact : N -> N .
  eq fact(z) = s(z) .
  eq fact(s(X)) = times(s(X), fact(X)) .
""", f"(fact {peano(9)})", numeral=True),
    Program("Fibonacci 25 (Peano; farm's memo makes it linear)", PEANO_RULES + """
rule fib_z: (fib z) => z
rule fib_one: (fib (s z)) => (s z)
rule fib_s: (fib (s (s ?n))) => (plus (fib (s ?n)) (fib ?n))
""", """
  op fib : N -> N .
  eq fib(z) = z .
  eq fib(s(z)) = s(z) .
  eq fib(s(s(X))) = plus(fib(s(X)), fib(X)) .
""", f"(fib {peano(25)})", numeral=True),
]


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


def run_maude(program: Program, tmp: Path) -> dict[str, Any]:
    term = maude_term(program.term)
    out, wall = _maude(program, tmp, f"red {term} .")
    stats = re.search(r"rewrites: (\d+) in (\d+)ms cpu", out)
    if stats is None:
        raise RuntimeError(f"unexpected Maude output: {out[-2000:]}")
    if program.numeral:  # compared by value, computed in a run of its own (not timed)
        checked, _ = _maude(program, tmp, f"red val({term}, 0) .", "  protecting NAT .\n  op val : N Nat -> Nat .\n"
                            "  var A : Nat .\n  eq val(z, A) = A .\n  eq val(s(X), A) = val(X, A + 1) .\n")
        normal_form = _result(checked)
    else:
        normal_form = farm_text(_result(out))
    return {"rewrites": int(stats[1]), "cpu_s": int(stats[2]) / 1000, "process_s": wall, "normal_form": normal_form}


def _maude(program: Program, tmp: Path, command: str, extra: str = "") -> tuple[str, float]:
    source = tmp / "prog.maude"
    source.write_text(f"set show timing on .\nset show advisories off .\nfmod PROG is\n{extra}{PEANO_MAUDE}"
                      f"{program.maude_module}endfm\n{command}\nquit\n")
    start = time.perf_counter()
    out = subprocess.run(["maude", "-no-banner", "-no-advise", str(source)], capture_output=True, text=True,
                         timeout=600, check=False).stdout
    return out, time.perf_counter() - start


def _result(out: str) -> str:
    result = re.search(r"result [\w{}]+: (.*?)(?:\nBye|\Z)", out, re.DOTALL)
    if result is None:
        raise RuntimeError(f"unexpected Maude output: {out[-2000:]}")
    return result[1].strip()


def run_farm(program: Program, tmp: Path) -> dict[str, Any]:
    parsed = parse_rules(program.farm_rules)
    ruleset = transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)
    engine = Engine(FarmConfig(cache_dir=tmp / "cache"))
    graph = TermGraph(ruleset.make_signature())
    roots = graph.parse(program.term)
    engine.rewrite(ruleset, graph, roots, "maude-bench", engine="native")  # compile and load, untimed
    graph = TermGraph(ruleset.make_signature())
    roots = graph.parse(program.term)
    start = time.perf_counter()
    result = engine.rewrite(ruleset, graph, roots, "maude-bench", engine="native", fuel=1 << 40)
    end_to_end = time.perf_counter() - start
    text = result.texts()[0]
    normal_form = str(text.count("(s ")) if program.numeral else text  # a numeral's value (see Program)
    return {"steps": result.steps[0], "library_s": result.seconds["rewrite"], "end_to_end_s": end_to_end,
            "normal_form": normal_form}


def compare(programs: list[Program] = PROGRAMS) -> dict[str, Any]:
    """Each program through farm (native) and Maude in turn; {} entries when maude is not installed."""
    if shutil.which("maude") is None:
        return {"skipped": "maude is not installed (Debian package maude)"}
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as name:
        for program in programs:
            tmp = Path(name) / str(len(rows))
            tmp.mkdir()
            farm, maude = run_farm(program, tmp), run_maude(program, tmp)
            rows[program.name] = {
                "farm_steps": farm["steps"], "farm_library_ms": farm["library_s"] * 1000,
                "farm_end_to_end_ms": farm["end_to_end_s"] * 1000, "maude_rewrites": maude["rewrites"],
                "maude_cpu_ms": maude["cpu_s"] * 1000,
                "library_vs_maude": farm["library_s"] / maude["cpu_s"] if maude["cpu_s"] else None,
                "same_normal_form": farm["normal_form"] == maude["normal_form"]}
    return rows


def markdown(rows: dict[str, Any]) -> str:
    if "skipped" in rows:
        return f"farm vs Maude: skipped ({rows['skipped']})"
    lines = ["| program | farm steps | farm in library (ms) | farm end to end (ms) | Maude rewrites | Maude cpu (ms) "
             "| library / Maude cpu (goal <= 0.5) | same normal form |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = "n/a (Maude 0 ms)" if r["library_vs_maude"] is None else f"{r['library_vs_maude']:.2f}"
        lines.append(f"| {name} | {r['farm_steps']:,} | {r['farm_library_ms']:.1f} | {r['farm_end_to_end_ms']:.1f} "
                     f"| {r['maude_rewrites']:,} | {r['maude_cpu_ms']:.0f} | {ratio} | "
                     f"{'yes' if r['same_normal_form'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(compare()))
