"""Review of 974bc9e, 334927e, 1546746: values kept in registers between Evals (Eval.kept), interning's slow path
pushing its kids, the call depth as a parameter (ABI 10), and operators' functions in LLVM's GHC convention."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import farm.compiler.codegen.operators
import farm.compiler.codegen.rust
import farm.semantics
import farm.semantics.interp
from farm.cache.engine import Engine, load_native
from farm.compiler import matchprog as mp
from farm.compiler.policy import defined_functions
from farm.lang.terms import TermGraph
from farm.runtime.verify import TermGenerator
from farm.semantics.interp import Interpreter

from .conftest import check_ir, ruleset_of
from .test_runtime import LISTS, assert_same, raw_rewrite
from .test_text_targets import peano, run_interpreter, run_rust, rust_binary

# ---- matchprog.keep_across_evals ----


def steps_of(rules: str, op: str) -> list[tuple[mp.Instruction, ...]]:
    rs = ruleset_of(rules)
    lowering = mp.Lowering(rs)
    found: list[tuple[mp.Instruction, ...]] = []

    def walk(p: mp.Program) -> None:
        if isinstance(p, mp.Attempt):
            found.append(p.steps)
            walk(p.otherwise)
        elif isinstance(p, mp.Chain):
            walk(p.first)
            walk(p.rest)
        elif isinstance(p, mp.Switch):
            for _, sub in p.literals:
                walk(sub)
            for case in p.operators:
                walk(case.body)
            walk(p.default)

    walk(lowering.operator(op).body)
    return found


def kept_of(steps: tuple[mp.Instruction, ...]) -> dict[int, int | None]:
    return {s.dest.index: s.kept for s in steps if isinstance(s, mp.Eval)}


def test_a_value_read_past_the_next_eval_is_kept_and_one_read_by_it_is_not() -> None:
    steps = steps_of("rule r: (r ?x) => (c (f ?x) (g (f ?x)) (f ?x))\nrule f: (f ?x) => (d ?x)\n"
                     "rule g: (g ?x) => (e ?x)", "r")[0]
    evals = [s for s in steps if isinstance(s, mp.Eval)]
    # T0 = f(x) (read by g and by c, past g), T1 = g(T0) (read by c: the next Eval), T2 = c(...)
    assert [type(e.expr).__name__ for e in evals] == ["Call", "Call", "Build"]
    assert kept_of(steps) == {0: 0, 1: None, 2: None}


def test_condition_values_the_target_reuses_are_kept() -> None:
    steps = steps_of("rule r: (r ?x) if (f ?x) = (g ?x) => (c (f ?x) (g ?x))\nrule f: (f ?x) => (d ?x)\n"
                     "rule g: (g ?x) => (d ?x)", "r")[0]
    # T0 = f(x), T1 = g(x), the test reads both, the target's Build (T2) reads both again
    assert kept_of(steps) == {0: 0, 1: None, 2: None}
    steps = steps_of("rule r: (r ?x) if (f ?x) = (g ?x) => (c (g ?x) (h ?x) (f ?x))\nrule f: (f ?x) => (d ?x)\n"
                     "rule g: (g ?x) => (d ?x)\nrule h: (h ?x) => (d ?x)", "r")[0]
    assert kept_of(steps) == {0: 0, 1: 1, 2: None, 3: None}


# ---- the call depth as a parameter (ABI 10): CallsTooDeep exactly where the interpreter says ----

SMALL_DEPTH = 40
DEPTH_RULES = """
rule d0: (down z) => z
rule d1: (down (s ?x)) => (t (down ?x))
rule g: (grow ?x) => (s (grow (s ?x)))
rule c0: (deep z) => yes
rule c1: (deep (s ?x)) => yes if (deep ?x) = yes
rule n0: (down9 z ?a ?b ?c ?d ?e ?f ?g ?h) => (k ?a ?h)
rule n1: (down9 (s ?x) ?a ?b ?c ?d ?e ?f ?g ?h) => (t (down9 ?x ?a ?b ?c ?d ?e ?f ?g ?h))
rule e0: (down8 z ?a ?b ?c ?d ?e ?f ?g) => (k ?a ?g)
rule e1: (down8 (s ?x) ?a ?b ?c ?d ?e ?f ?g) => (t (down8 ?x ?a ?b ?c ?d ?e ?f ?g))
rule dv_sz: (dv (s ?x) z ?p) => (dv (s ?x) ?p ?p)
rule dv_ss: (dv (s ?x) (s ?k) ?p) => (dv ?x ?k ?p)
rule dv_zz: (dv z z ?p) => true
rule m: (mix (s ?x)) => (t3 (down8 ?x a b c d e f g) (down ?x) (mix ?x))
rule m0: (mix z) => z
"""


def depth_terms() -> str:
    terms = ["(grow z)"]
    for n in (SMALL_DEPTH - 3, SMALL_DEPTH - 2, SMALL_DEPTH - 1, SMALL_DEPTH, SMALL_DEPTH + 1):
        terms += [f"(down {peano(n)})", f"(deep {peano(n)})", f"(down9 {peano(n)} a b c d e f g h)",
                  f"(down8 {peano(n)} a b c d e f g)", f"(dv {peano(n)} {peano(n)} z)", f"(mix {peano(n // 2)})",
                  f"(dv (s {peano(n)}) {peano(n)} z)"]
    return " ".join(terms)


@pytest.fixture
def small_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (farm.semantics, farm.semantics.interp, farm.compiler.codegen.operators,
                   farm.compiler.codegen.rust):
        monkeypatch.setattr(module, "MAX_CALL_DEPTH", SMALL_DEPTH)


def interp_result(rules: str, text: str, fuel: int = 100_000):  # type: ignore[no-untyped-def]
    rs = ruleset_of(rules)
    g = TermGraph(rs.make_signature())
    return Interpreter(rs).rewrite(g, g.parse(text), fuel, 0)


def test_calls_too_deep_at_the_same_depth_as_the_interpreter_in_memory(engine: Engine, small_depth: None) -> None:
    """Right at MAX_CALL_DEPTH (made small): down to it every call runs; one past it, CallsTooDeep, with the
    same steps and firings; through conditions, arity 8 (GHC convention), arity 9 and a flagged operator (C
    convention) alike."""
    rs = ruleset_of(DEPTH_RULES)
    assert farm.compiler.codegen.operators.norm_convention(9, False) == ""
    text = depth_terms()
    expected = interp_result(DEPTH_RULES, text)
    kinds = {type(o).__name__ for o in expected.outcomes}
    assert "CallsTooDeep" in kinds and "int" in kinds
    for opt in (0, 2):  # tier 0's C convention and the GHC one (norm_convention)
        native = engine.load_in_memory(rs, opt_level=opt)
        g = TermGraph(rs.make_signature())
        assert_same(native.rewrite(g, g.parse(text), 100_000, 0), expected, rs)


def test_calls_too_deep_at_the_same_depth_as_the_interpreter_in_a_library(engine: Engine, small_depth: None) -> None:
    rs = ruleset_of(DEPTH_RULES)
    text = depth_terms()
    expected = interp_result(DEPTH_RULES, text)
    for opt in (0, 2):
        engine.config.opt_level = opt  # type: ignore[misc]
        native = load_native(rs, engine.compile(rs, f"depth{opt}", opt_level=opt))
        g = TermGraph(rs.make_signature())
        assert_same(native.rewrite(g, g.parse(text), 100_000, 0), expected, rs)


def test_rust_calls_too_deep_at_the_same_depth_as_the_interpreter(tmp_path: Path, small_depth: None) -> None:
    rs = ruleset_of(DEPTH_RULES)
    text = depth_terms()
    assert run_rust(rust_binary(rs, tmp_path), rs, text, 100_000) == run_interpreter(rs, text, 100_000)


# ---- operators' functions in LLVM's GHC convention ----

CONVENTIONS = """
rule a8: (f8 ?a ?b ?c ?d ?e ?f ?g (s ?h)) => (k2 (f8 ?h ?a ?b ?c ?d ?e ?f ?g) (f9 ?a ?b ?c ?d ?e ?f ?g ?h z))
rule a8z: (f8 ?a ?b ?c ?d ?e ?f ?g z) => (k2 ?a (zero))
rule a9: (f9 ?a ?b ?c ?d ?e ?f ?g (s ?h) ?i) => (k2 (f9 ?a ?b ?c ?d ?e ?f ?g ?h (s ?i)) (dv (s ?h) (s ?h) ?a))
rule a9z: (f9 ?a ?b ?c ?d ?e ?f ?g z ?i) => (k2 ?i (fib ?g))
rule zero: (zero) => z
rule dv_sz: (dv (s ?x) z ?p) => (dv (s ?x) ?p ?p)
rule dv_ss: (dv (s ?x) (s ?k) ?p) => (dv ?x ?k (plus ?p (s z)))
rule dv_zz: (dv z z ?p) => (f8 ?p ?p ?p ?p ?p ?p ?p z)
rule plus_z: (plus z ?y) => ?y
rule plus_s: (plus (s ?x) ?y) => (s (plus ?x ?y))
rule fib_z: (fib z) => z
rule fib_1: (fib (s z)) => (s z)
rule fib_n: (fib (s (s ?n))) => (plus (fib (s ?n)) (fib ?n))
rule spin: (spin ?x) => (spin (s ?x))
rule cyc [bidirectional]: (cy a) => (cy b)
"""
CONVENTION_TERMS = " ".join([
    f"(f8 a b c d e f (s z) {peano(3)})", f"(f8 a b c d e f {peano(2)} {peano(4)})",
    f"(f9 a b c d e f {peano(5)} {peano(4)} z)", f"(dv {peano(4)} {peano(2)} z)", f"(dv {peano(3)} {peano(3)} z)",
    "(dv (s z) z z)", f"(fib {peano(12)})", "(spin z)", "(cy a)", "(zero)", f"(f8 z z z z z z z {peano(6)})"])


def filler(n: int) -> str:
    return "".join(f"rule fill{i}: (fill{i} (s ?x)) => (fill{i} ?x)\n" for i in range(n))


def chunked(rules: str) -> str:
    """The rules with enough filler between them that a library has several chunks, operators defined in one and
    called from another."""
    parts = [line for line in rules.strip().splitlines() if line.strip()]
    out = []
    for k, line in enumerate(parts):
        out.append(line)
        out.append(f"rule gap{k}: (gap{k} ?x) => (gap{k} (s ?x))\n" + filler(0))
        out.append("".join(f"rule gap{k}_{i}: (gap{k}_{i} z) => z" + "\n" for i in range(30)))
    return "\n".join(out)


def check_against_interpreter(rs, native, text: str) -> None:  # type: ignore[no-untyped-def]
    g1, g2 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
    a = native.rewrite(g1, g1.parse(text), 200_000, 0)
    b = Interpreter(rs).rewrite(g2, g2.parse(text), 200_000, 0)
    assert_same(a, b, rs)
    gen = TermGenerator(rs, random.Random(3))
    g3 = TermGraph(rs.make_signature())
    texts = " ".join(g3.to_text(gen.term(g3)) for _ in range(60))
    g4, g5 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
    assert_same(native.rewrite(g4, g4.parse(texts), 3_000, 0), Interpreter(rs).rewrite(g5, g5.parse(texts), 3_000, 0),
                rs)


def test_conventions_in_memory_at_every_level(engine: Engine) -> None:
    rs = ruleset_of(CONVENTIONS)
    conv = farm.compiler.codegen.operators.norm_convention
    assert conv(8, False) == "ghccc" and conv(9, False) == "" and conv(3, True) == "" and conv(0, False) == "ghccc"
    for opt in (0, 2):  # tier 0's C convention and the GHC one (norm_convention)
        check_against_interpreter(rs, engine.load_in_memory(rs, opt_level=opt), CONVENTION_TERMS)


def test_conventions_in_a_library_at_every_level(engine: Engine) -> None:
    rs = ruleset_of(CONVENTIONS)
    for opt in (0, 2):
        check_against_interpreter(rs, load_native(rs, engine.compile(rs, f"conv{opt}", opt_level=opt)),
                                  CONVENTION_TERMS)


def test_conventions_across_chunks(engine: Engine) -> None:
    """Operators defined in one chunk module and called from another: both sides in the same convention."""
    from farm.compiler.codegen.llvm import LLVMCodegen

    rs = ruleset_of(chunked(CONVENTIONS))
    parts = LLVMCodegen(rs).parts()
    assert len(parts) > 3
    chunk_texts = [text for name, text in parts if name.startswith("chunk")]
    assert any("declare ghccc" in text for text in chunk_texts)
    for text in chunk_texts:
        for line in text.splitlines():
            if "@farm_norm_op" in line and ("declare" in line or "define" in line or " call " in line):
                name = line.split("@farm_norm_op")[1].split("(")[0]
                op = rs.signature[int(name)][0]
                arity = dict(rs.signature)[op]
                flagged = "i1" in line.split("@farm_norm_op")[1] if " call " not in line else None
                if flagged is not None:
                    assert ("ghccc" in line) == (not flagged and arity <= 8), line
    check_against_interpreter(rs, engine.load_in_memory(rs, opt_level=0), CONVENTION_TERMS)  # the library layout
    check_against_interpreter(rs, load_native(rs, engine.compile(rs, "chunks", opt_level=2)), CONVENTION_TERMS)


# ---- values in registers between Evals, under collections ----

KEEPING = LISTS + """
rule p: (p ?n) => (t3 (rev (mk ?n)) (len (rev (mk ?n))) (rev (mk ?n)))
rule q: (q ?n) if (len (rev (mk ?n))) = (len (mk ?n)) => (t2 (rev (mk ?n)) (app (mk ?n) (rev (mk ?n))))
rule b: (b ?n ?x) => (t3 (rev (mkk ?n ?x)) (s (v ?n ?x)) (t2 (v ?n ?x) (len (mkk ?n ?x))))
rule c: (c ?n) => (t2 {?n + 1} (t3 (len (rev (mk ?n))) {?n * 2} (rev (mk {?n + 1}))))
rule r8: (r8 ?a ?b ?c ?d ?e ?f ?g ?n) => (t3 (rev (mk ?n)) (t8 ?a ?b ?c ?d ?e ?f ?g (len (rev (mk ?n)))) ?g)
rule m: (m ?n) => (t2 (memo ?n) (memo ?n))
rule memo: (memo 0) => nil
rule memo1: (memo ?n) if ?n > 0 => (cons (rev (mk ?n)) (memo {?n - 1}))
"""


def test_values_between_evals_survive_collections(engine: Engine) -> None:
    rs = ruleset_of(KEEPING)
    terms = " ".join(f"(p {n}) (q {n}) (b {n} a) (c {n}) (r8 k1 k2 k3 k4 k5 k6 (k7 a) {n}) (m {n // 4})"
                     for n in (0, 1, 5, 60, 200, 250, 7, 300))
    for opt in (0, 2):
        native = engine.load_in_memory(rs, opt_level=opt)
        g1, g2 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
        roots = g1.parse(terms)
        a = native.rewrite(g1, roots, 10**8, 0)
        b = Interpreter(rs).rewrite(g2, g2.parse(terms), 10**8, 0)
        assert_same(a, b, rs)
        assert all(isinstance(o, int) for o in a.outcomes)
        g3 = TermGraph(rs.make_signature())
        raw = raw_rewrite(native, (g3.ops, g3.arities, g3.vals, g3.kid_ids), g3.parse(terms))
        assert raw.code == 0 and raw.stats["collections"] >= 3, raw.stats


def test_the_ir_policy_reads_ghccc_and_keeps_madvise_to_the_c_convention() -> None:
    """The rules' module with its ghccc functions, calls and declarations passes the IR policy as LLVM prints it;
    madvise called in another convention (its advice then in another register) is refused like any other
    indirect use."""
    from farm.compiler.codegen.llvm import LLVMCodegen
    from farm.errors import PolicyViolation

    check_ir(LLVMCodegen(ruleset_of(CONVENTIONS)).single_module())
    for chunk_rs in (ruleset_of(chunked(CONVENTIONS)),):
        parts = LLVMCodegen(chunk_rs).parts()
        provided = frozenset().union(*(defined_functions(text) for _, text in parts))
        for name, text in parts:
            check_ir(text, name, provided)
    for convention in ("ghccc ", "fastcc ", "cc 10 "):
        hostile = (f"declare {convention}i32 @madvise(ptr, i64, i32)\n"
                   f"define void @f(ptr %p) {{\n  %r = call {convention}i32 @madvise(ptr %p, i64 4096, i32 23)\n"
                   "  ret void\n}\n")
        with pytest.raises(PolicyViolation, match="madvise"):
            check_ir(hostile)
