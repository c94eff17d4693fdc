"""The pattern model: expressions, guards, polarity and the user-facing TopologicalPattern."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from farm.errors import SourceLocation


@dataclass(frozen=True)
class Var:
    name: str

    def __str__(self) -> str:
        return f"?{self.name}"


@dataclass(frozen=True)
class Lit:
    value: int

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class App:
    op: str
    args: tuple[PatternExpr, ...] = ()

    def __str__(self) -> str:
        if not self.args:
            return self.op
        return "(" + " ".join([self.op, *map(str, self.args)]) + ")"


# Arithmetic over bound literals, evaluated in wrapping two's-complement i64.
ARITH_OPS = ("+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>")


@dataclass(frozen=True)
class BinOp:
    op: str
    left: LitExpr
    right: LitExpr

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


@dataclass(frozen=True)
class Neg:
    operand: LitExpr

    def __str__(self) -> str:
        return f"-{self.operand}"


LitExpr = Var | Lit | BinOp | Neg


@dataclass(frozen=True)
class Computed:
    """`{?a + ?b}`: a literal computed from bound literals (only in targets and conditions)."""

    expr: LitExpr

    def __str__(self) -> str:
        return "{" + str(self.expr).removeprefix("(").removesuffix(")") + "}"


PatternExpr = Var | Lit | App | Computed


@dataclass(frozen=True)
class IsConst:
    var: Var

    def __str__(self) -> str:
        return f"const({self.var})"


COMPARE_OPS = ("==", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True)
class Compare:
    """`==`/`!=` compare terms (literals by value); the orderings hold only between two literals."""

    op: str
    left: Var | Lit
    right: Var | Lit

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True)
class TermCondition:
    """Conditional rewriting: `t1 = t2` (or `<>`) after normalising both sides with the ruleset."""

    left: PatternExpr
    right: PatternExpr
    equal: bool = True

    def __str__(self) -> str:
        return f"{self.left} {'=' if self.equal else '<>'} {self.right}"


Constraint = IsConst | Compare | TermCondition


class Polarity(enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    BIDIRECTIONAL = "bidirectional"


@dataclass(frozen=True)
class TopologicalPattern:
    """A rule as the user wrote it, before polarity expansion and checks."""

    name: str
    source: PatternExpr
    target: PatternExpr
    constraints: tuple[Constraint, ...] = ()
    polarity: Polarity = Polarity.FORWARD
    priority: int = 0
    location: SourceLocation | None = field(default=None, compare=False)


def subexprs(expr: PatternExpr | LitExpr) -> Iterator[PatternExpr | LitExpr]:
    """Every sub-expression, pre-order (patterns are small: recursion is fine here)."""
    yield expr
    if isinstance(expr, App):
        for arg in expr.args:
            yield from subexprs(arg)
    elif isinstance(expr, Computed):
        yield from subexprs(expr.expr)
    elif isinstance(expr, BinOp):
        yield from subexprs(expr.left)
        yield from subexprs(expr.right)
    elif isinstance(expr, Neg):
        yield from subexprs(expr.operand)


def variables(expr: PatternExpr | LitExpr) -> list[str]:
    """Variable names in first-occurrence order, repeated occurrences included."""
    return [e.name for e in subexprs(expr) if isinstance(e, Var)]


def constraint_exprs(c: Constraint) -> tuple[PatternExpr, ...]:
    if isinstance(c, IsConst):
        return (c.var,)
    return (c.left, c.right)
