"""Definitions every evaluator shares (interpreter, oracle, native loader): arithmetic, errors and results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from farm.errors import (
    ArenaOutOfMemory,
    CallsTooDeep,
    ConditionsTooDeep,
    FuelExhausted,
    InvalidArgument,
    NonTermination,
    RewriteCycle,
)
from farm.lang.rules import BinOp, Expr, Lit, LitExpr, Neg, Var, fold
from farm.lang.terms import TermGraph, wrap_i64

DEFAULT_FUEL = 10_000_000
MAX_FUEL = (1 << 63) - 1  # the native ABI passes fuel as an i64
# Normalisations nested by conditions (`if t1 = t2` normalises t1, whose rules may have conditions, ...). The
# interpreter and the oracle keep them on their own stacks, but compiled code (LLVM and Rust) recurses on the
# machine stack for each level, so every engine stops at the same depth with a per-term ConditionsTooDeep
# rather than overflowing: 1,000 levels take at most ~0.4 MB of native stack at -O0 (10,000 levels needed
# more than a 2 MB thread stack), well inside a thread's default 8 MB.
MAX_CONDITION_DEPTH = 1_000
# Calls in progress at once (docs/rules.md, "Semantics"): a right-hand side calls the operators it applies, so
# recursion in the rules nests calls. 2^22 frames of compiled code fit the native stack the loader provides;
# a term a million levels deep rewrites well within it.
MAX_CALL_DEPTH = 1 << 22
# Entries the memo of a memoised operator's calls holds at once (docs/rules.md, "Memo").
MAX_MEMO_ENTRIES = 1 << 18


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


def check_fuel(fuel: int) -> int:
    """Fuel is a number of rewrite steps, at least 1: 0 or less would fail every term that has a redex."""
    if isinstance(fuel, bool) or not isinstance(fuel, int) or not 1 <= fuel <= MAX_FUEL:
        raise InvalidArgument("fuel", fuel, f"an integer from 1 to {MAX_FUEL}")
    return fuel


def arith(op: str, a: int, b: int) -> int:
    """Wrapping i64 arithmetic; `/` and `%` truncate toward zero (C, LLVM sdiv/srem); shifts use b & 63."""
    if op == "+":
        return wrap_i64(a + b)
    if op == "-":
        return wrap_i64(a - b)
    if op == "*":
        return wrap_i64(a * b)
    if op == "/":
        q = abs(a) // abs(b)
        return wrap_i64(q if (a < 0) == (b < 0) else -q)
    if op == "%":
        return wrap_i64(a - b * arith("/", a, b))
    if op == "&":
        return a & b
    if op == "|":
        return a | b
    if op == "^":
        return a ^ b
    if op == "<<":
        return wrap_i64(a << (b & 63))
    if op == ">>":
        return a >> (b & 63)
    raise ValueError(f"unknown arithmetic operator {op!r}")


def eval_lit(expr: LitExpr, values: Mapping[str, int]) -> int:
    """The value of a computed literal, bottom-up without recursion (an expression may be long)."""
    def combine(node: Expr, operands: list[int]) -> int:
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Var):
            return values[node.name]
        if isinstance(node, Neg):
            return wrap_i64(-operands[0])
        assert isinstance(node, BinOp)
        return arith(node.op, operands[0], operands[1])

    return fold(expr, combine)


def compare(op: str, a: int, b: int) -> bool:
    return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def fuel_error(fuel: int, last_rule: str) -> FuelExhausted:
    return FuelExhausted(f"no normal form within the fuel budget of {fuel} rewrite steps "
                         f"(last rule fired: {last_rule!r}); the rules may not terminate", fuel)


def depth_error(last_rule: str, steps: int) -> ConditionsTooDeep:
    return ConditionsTooDeep(f"conditions nest deeper than {MAX_CONDITION_DEPTH} levels (each condition "
                             f"normalises a term whose rules have conditions; last rule fired: {last_rule!r})", steps)


def calls_error(last_rule: str, steps: int, native_stack: int = 0) -> CallsTooDeep:
    """Calls nested past MAX_CALL_DEPTH; or, with `native_stack` (bytes), past the compiled code's stack."""
    where = f"past the {mebibytes(native_stack)} native stack" if native_stack else \
        f"deeper than {MAX_CALL_DEPTH} levels"
    return CallsTooDeep(f"rewriting nests calls {where} (each rule whose target applies a defined operator "
                        f"calls it; last rule fired: {last_rule!r}); the rules may not terminate", steps)


def cycle_error(steps: int, last_rule: str) -> RewriteCycle:
    return RewriteCycle(f"rewriting loops: a term rewrites back to itself after {steps} steps "
                        f"(last rule fired: {last_rule!r}); it has no normal form", steps)


def mebibytes(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


def memory_error(cap: int, held: int, during: str) -> ArenaOutOfMemory:
    """The arena or the interpreter holds `held` bytes and cannot grow `during` some phase. Below the cap
    it is malloc that refused: the machine itself is out of memory."""
    if cap and held * 2 > cap:  # growth doubles, so a refused growth from over half the cap is the cap's
        return ArenaOutOfMemory(f"rewriting stopped at the memory cap FARM_MAX_MEMORY={cap} ({mebibytes(cap)}) "
                                f"{during}: it holds {mebibytes(held)} and needs more; the rules may not "
                                "terminate, or raise FARM_MAX_MEMORY", cap)
    below = f"below the memory cap FARM_MAX_MEMORY={cap}" if cap else "with no memory cap (FARM_MAX_MEMORY=0)"
    return ArenaOutOfMemory(f"out of memory {during}: malloc refused at {mebibytes(held)} held, {below}", cap)
