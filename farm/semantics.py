"""Definitions every evaluator shares (interpreter, oracle, native loader): arithmetic and errors."""

from __future__ import annotations

from collections.abc import Mapping

from farm.errors import ArenaOutOfMemory, FuelExhausted, RewriteCycle
from farm.rules import BinOp, Lit, LitExpr, Neg, Var
from farm.terms import wrap_i64

DEFAULT_FUEL = 10_000_000


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
    if isinstance(expr, Lit):
        return expr.value
    if isinstance(expr, Var):
        return values[expr.name]
    if isinstance(expr, Neg):
        return wrap_i64(-eval_lit(expr.operand, values))
    assert isinstance(expr, BinOp)
    return arith(expr.op, eval_lit(expr.left, values), eval_lit(expr.right, values))


def compare(op: str, a: int, b: int) -> bool:
    return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def fuel_error(fuel: int, last_rule: str) -> FuelExhausted:
    return FuelExhausted(f"no normal form within the fuel budget of {fuel} rewrite steps "
                         f"(last rule fired: {last_rule!r}); the rules may not terminate", fuel)


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
