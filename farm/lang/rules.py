"""The pattern model: expressions, guards, polarity and the user-facing TopologicalPattern."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from farm.errors import SourceLocation


@dataclass(frozen=True)
class Var:
    """A pattern variable, `?name`."""

    name: str

    def __str__(self) -> str:
        return f"?{self.name}"


@dataclass(frozen=True)
class Lit:
    """A signed 64-bit integer literal."""

    value: int

    def __str__(self) -> str:
        return str(self.value)


class _Nested:
    """Equality, hash, str and repr of an expression with sub-expressions, none recursive: a pattern may nest
    thousands deep (DESIGN.md: no recursion in Python on user-driven depth). The hash is computed once, at
    construction, from the children's hashes (computed when they were built); equality walks both trees
    with a stack. Pickling goes through the flat postfix form for the same reason."""

    _hash: int

    def _freeze_hash(self) -> None:
        object.__setattr__(self, "_hash", hash((type(self).__name__, _label(self), children(self))))  # type: ignore[arg-type]

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return _equal(self, other)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return fold(self, _show)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return fold(self, _repr)  # type: ignore[arg-type]

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return from_postfix, (to_postfix(self),)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False, repr=False)
class App(_Nested):
    """An operator applied to arguments, `(op a1 .. an)`; a constant has none."""

    op: str
    args: tuple[PatternExpr, ...] = ()

    def __post_init__(self) -> None:
        self._freeze_hash()


# Arithmetic over bound literals, evaluated in wrapping two's-complement i64.
ARITH_OPS = ("+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>")


@dataclass(frozen=True, eq=False, repr=False)
class BinOp(_Nested):
    """A literal computed from two literal expressions, `left op right` (i64 arithmetic: docs/rules.md)."""

    op: str
    left: LitExpr
    right: LitExpr

    def __post_init__(self) -> None:
        self._freeze_hash()


@dataclass(frozen=True, eq=False, repr=False)
class Neg(_Nested):
    """A literal expression negated, `-operand` (i64 arithmetic: docs/rules.md)."""

    operand: LitExpr

    def __post_init__(self) -> None:
        self._freeze_hash()


LitExpr = Var | Lit | BinOp | Neg


@dataclass(frozen=True, eq=False, repr=False)
class Computed(_Nested):
    """`{?a + ?b}`: a literal computed from bound literals (only in targets and conditions)."""

    expr: LitExpr

    def __post_init__(self) -> None:
        self._freeze_hash()


PatternExpr = Var | Lit | App | Computed
Expr = PatternExpr | LitExpr
T = TypeVar("T")


def children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, App):
        return expr.args
    if isinstance(expr, Computed):
        return (expr.expr,)
    if isinstance(expr, BinOp):
        return (expr.left, expr.right)
    if isinstance(expr, Neg):
        return (expr.operand,)
    return ()


def _label(expr: Expr) -> object:
    """What distinguishes a node from another of its type besides its children."""
    if isinstance(expr, (App, BinOp)):
        return expr.op
    if isinstance(expr, Var):
        return expr.name
    if isinstance(expr, Lit):
        return expr.value
    return None


def fold(expr: Expr, combine: Callable[[Expr, list[T]], T]) -> T:
    """`combine(node, results of its children)` bottom-up, children left to right, without recursion."""
    results: list[T] = []
    stack: list[tuple[Expr, bool]] = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        kids = children(node)
        if not expanded and kids:
            stack.append((node, True))
            stack.extend((kid, False) for kid in reversed(kids))
            continue
        first = len(results) - len(kids)
        combined = combine(node, results[first:])
        del results[first:]
        results.append(combined)
    return results[0]


def fold_apps(expr: PatternExpr, leaf: Callable[[Var | Lit | Computed], T], app: Callable[[App, list[T]], T]) -> T:
    """Bottom-up over the applications only: variables, literals and computed literals are leaves, visited
    left to right (the order a recursive walk would take); without recursion."""
    results: list[T] = []
    stack: list[tuple[PatternExpr, bool]] = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if not isinstance(node, App):
            results.append(leaf(node))
        elif node.args and not expanded:
            stack.append((node, True))
            stack.extend((arg, False) for arg in reversed(node.args))
        else:
            first = len(results) - len(node.args)
            combined = app(node, results[first:])
            del results[first:]
            results.append(combined)
    return results[0]


def _equal(a: Expr, b: Expr) -> bool:
    pairs = [(a, b)]
    while pairs:
        x, y = pairs.pop()
        if x is y:
            continue
        if type(x) is not type(y) or _label(x) != _label(y):
            return False
        if isinstance(x, _Nested):
            kx, ky = children(x), children(y)
            if hash(x) != hash(y) or len(kx) != len(ky):
                return False
            pairs.extend(zip(kx, ky))
    return True


def _show(expr: Expr, kids: list[str]) -> str:
    if isinstance(expr, App):
        return "(" + " ".join([expr.op, *kids]) + ")" if kids else expr.op
    if isinstance(expr, BinOp):
        return f"({kids[0]} {expr.op} {kids[1]})"
    if isinstance(expr, Neg):
        return f"-{kids[0]}"
    if isinstance(expr, Computed):  # a binary operation's own parentheses become the braces
        return "{" + (kids[0][1:-1] if isinstance(expr.expr, BinOp) else kids[0]) + "}"
    return str(expr)


def _repr(expr: Expr, kids: list[str]) -> str:
    if isinstance(expr, App):
        args = "(" + ", ".join(kids) + ("," if len(kids) == 1 else "") + ")"
        return f"App(op={expr.op!r}, args={args})"
    if isinstance(expr, BinOp):
        return f"BinOp(op={expr.op!r}, left={kids[0]}, right={kids[1]})"
    if isinstance(expr, Neg):
        return f"Neg(operand={kids[0]})"
    if isinstance(expr, Computed):
        return f"Computed(expr={kids[0]})"
    return repr(expr)


# The postfix form: a flat list of JSON-friendly items, children before their parent.
PostfixItem = list[object]


def to_postfix(expr: Expr) -> list[PostfixItem]:
    items: list[PostfixItem] = []

    def emit(node: Expr, _: list[None]) -> None:
        if isinstance(node, Var):
            items.append(["var", node.name])
        elif isinstance(node, Lit):
            items.append(["lit", node.value])
        elif isinstance(node, App):
            items.append(["app", node.op, len(node.args)])
        elif isinstance(node, BinOp):
            items.append(["binop", node.op])
        elif isinstance(node, Neg):
            items.append(["neg"])
        else:
            items.append(["computed"])

    fold(expr, emit)
    return items


def from_postfix(items: list[PostfixItem]) -> Expr:
    """The inverse of to_postfix; ValueError names the first item that does not fit."""
    stack: list[Expr] = []

    def take(count: int, at: int) -> list[Expr]:
        if count < 0 or count > len(stack):
            raise ValueError(f"postfix item {at} takes {count} operands, {len(stack)} available")
        taken = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        return taken

    for at, item in enumerate(items):
        tag = item[0]
        if tag == "var":
            stack.append(Var(str(item[1])))
        elif tag == "lit":
            stack.append(Lit(int(item[1])))  # type: ignore[call-overload]
        elif tag == "app":
            stack.append(App(str(item[1]), tuple(take(int(item[2]), at))))  # type: ignore[arg-type, call-overload]
        elif tag == "binop":
            left, right = take(2, at)
            stack.append(BinOp(str(item[1]), left, right))  # type: ignore[arg-type]
        elif tag == "neg":
            stack.append(Neg(*take(1, at)))  # type: ignore[arg-type]
        elif tag == "computed":
            stack.append(Computed(*take(1, at)))  # type: ignore[arg-type]
        else:
            raise ValueError(f"postfix item {at} has an unknown tag {tag!r}")
    if len(stack) != 1:
        raise ValueError(f"postfix items leave {len(stack)} expressions, expected 1")
    return stack[0]


@dataclass(frozen=True)
class IsConst:
    """The guard `const(?x)`: the variable is bound to a literal."""

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


def subexprs(expr: Expr) -> Iterator[Expr]:
    """Every sub-expression, pre-order, children left to right; iterative (patterns may nest deeply)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def variables(expr: PatternExpr | LitExpr) -> list[str]:
    """Variable names in first-occurrence order, repeated occurrences included."""
    return [e.name for e in subexprs(expr) if isinstance(e, Var)]


def constraint_exprs(c: Constraint) -> tuple[PatternExpr, ...]:
    if isinstance(c, IsConst):
        return (c.var,)
    return (c.left, c.right)
