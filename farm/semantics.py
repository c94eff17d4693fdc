"""Definitions every evaluator shares (interpreter, oracle, native loader): arithmetic and errors."""

from __future__ import annotations

from collections.abc import Mapping

from farm.errors import FuelExhausted, InvalidArgument, RewriteCycle
from farm.rules import BinOp, Lit, LitExpr, Neg, Var
from farm.terms import wrap_i64

DEFAULT_FUEL = 10_000_000
MAX_FUEL = (1 << 63) - 1  # the native ABI passes fuel as an i64


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
