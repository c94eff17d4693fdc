"""Ground terms as a hash-consed DAG in a flat arena, with an iterative parser and printer.

Equal subterms share one node id, so structural equality is id equality. Nothing here recurses on
the depth of a term: a Peano numeral a million levels deep parses, prints and converts.
"""

from __future__ import annotations

import gc
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

from farm.errors import ParseError, SourceLocation, TermError
from farm.lang.lexer import I64_MAX, I64_MIN

T = TypeVar("T")

_TERM_TOKEN = re.compile(r"\s+|[;#][^\n]*|[()]|[^\s();#]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.']*")
_INT = re.compile(r"-?[0-9]+")


def _location(text: str, filename: str, offset: int) -> SourceLocation:
    line = text.count("\n", 0, offset) + 1
    return SourceLocation(filename, line, offset - (text.rfind("\n", 0, offset) + 1) + 1)

LIT = -1  # op id of an integer literal node

# Operator ids, arities and child ids are 32-bit columns, literal values and child offsets 64-bit: a unary
# node takes 20 bytes instead of 32, and a large normal form's export is mostly the first touch of its
# columns' fresh pages. The native ABI reads and writes these widths (docs/abi.md).
Typecode = Literal["i", "q"]
ID_TYPECODE: Final[Typecode] = "i"
VALUE_TYPECODE: Final[Typecode] = "q"
assert array(ID_TYPECODE).itemsize == 4 and array(VALUE_TYPECODE).itemsize == 8
# A column of a term graph: an array, or a typed view of memory mapped for a large native export (read and
# written in place, never resized: the graph copies it into an array before it adds a node).
Column = array | memoryview
MAX_NODES = 2**31 - 1  # node ids are 32-bit


@contextmanager
def bulk() -> Iterator[None]:
    """Pause the cyclic GC while building many nodes: term tuples hold no cycles, and a million of them
    would otherwise trigger repeated full collections (measured: ~7% of a large native rewrite)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _owned(column: Column, typecode: str) -> array:
    """The column as an array Python may append to: itself, or a mapped column's cells copied."""
    if isinstance(column, array):
        return column
    owned = array(typecode)
    owned.frombytes(column.cast("B"))
    return owned


def wrap_i64(value: int) -> int:
    """Two's-complement wrap of a Python int to signed 64 bits."""
    return ((value + 2**63) % 2**64) - 2**63


@dataclass
class Signature:
    """Operator names and arities; ids are positions. A ruleset's operators come first."""

    names: list[str] = field(default_factory=list)
    arities: list[int] = field(default_factory=list)
    _ids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, ops: Iterable[tuple[str, int]]) -> Signature:
        sig = cls()
        for name, arity in ops:
            sig.declare(name, arity)
        return sig

    def copy(self) -> Signature:
        return Signature(list(self.names), list(self.arities), dict(self._ids))

    def declare(self, name: str, arity: int, where: str = "") -> int:
        op = self._ids.get(name)
        if op is None:
            op = len(self.names)
            self.names.append(name)
            self.arities.append(arity)
            self._ids[name] = op
        elif self.arities[op] != arity:
            raise TermError(f"{where}operator {name!r} has arity {self.arities[op]}, used here with {arity}")
        return op

    def lookup(self, name: str) -> int | None:
        return self._ids.get(name)

    def __len__(self) -> int:
        return len(self.names)


class TermGraph:
    """A flat arena of nodes in four columns, the layout the native library reads and writes directly:
    `ops[i]` is an op id or LIT; `vals[i]` the literal value, or where node i's children start in
    `kid_ids`; `arities[i]` how many children it has. Children always have smaller ids than parents.
    `vals` is 64-bit, the others 32-bit (ID_TYPECODE)."""

    def __init__(self, signature: Signature | None = None) -> None:
        self.signature = signature.copy() if signature is not None else Signature()
        ops, vals, arities, kid_ids = array(ID_TYPECODE), array(VALUE_TYPECODE), array(ID_TYPECODE), \
            array(ID_TYPECODE)
        self.ops: Column = ops
        self.vals: Column = vals
        self.arities: Column = arities
        self.kid_ids: Column = kid_ids
        # What adding a node takes: the interning table, and the columns as arrays. None for a graph over
        # columns someone else filled until Python first adds a node to it (_start_adding).
        self._adding: tuple[dict[tuple[int, object], int], array, array, array, array] | None = \
            ({}, ops, vals, arities, kid_ids)
        # The children tuples the interning keys hold anyway, kept per node so Python-side walks (the
        # interpreter) need not slice the columns; absent for graphs built from native columns.
        self._kid_tuples: list[tuple[int, ...]] | None = []

    @classmethod
    def from_columns(cls, signature: Signature, ops: Column, vals: Column, arities: Column,
                     kid_ids: Column) -> TermGraph:
        """A graph over columns someone else filled (a native export): already hash-consed, children
        first. The interning table is rebuilt, and mapped columns copied into arrays, only if Python adds
        nodes to it later."""
        graph = cls(signature)
        graph.ops, graph.vals, graph.arities, graph.kid_ids = ops, vals, arities, kid_ids
        graph._adding = None
        graph._kid_tuples = None
        return graph

    def __len__(self) -> int:
        return len(self.ops)

    def lit(self, value: int) -> int:
        return self._intern(LIT, wrap_i64(value), ())

    def app(self, op: int, kids: Sequence[int] = ()) -> int:
        kids = tuple(kids)
        return self._intern(op, kids, kids)

    def app_named(self, name: str, kids: Sequence[int] = ()) -> int:
        return self.app(self.signature.declare(name, len(kids)), kids)

    def _intern(self, op: int, payload: object, kids: tuple[int, ...]) -> int:
        cons, ops, vals, arities, kid_ids = self._adding or self._start_adding()
        key = (op, payload)
        node = cons.get(key)
        if node is None:
            node = len(ops)
            if node == MAX_NODES:
                raise TermError(f"a term graph holds at most {MAX_NODES} nodes (node ids are 32-bit)")
            ops.append(op)
            if op == LIT:
                vals.append(payload)  # type: ignore[arg-type]
                arities.append(0)
            else:
                vals.append(len(kid_ids))
                arities.append(len(kids))
                kid_ids.extend(kids)
            cons[key] = node
            if self._kid_tuples is not None:
                self._kid_tuples.append(kids)
        return node

    def _start_adding(self) -> tuple[dict[tuple[int, object], int], array, array, array, array]:
        """Make a graph over filled columns ready for new nodes: its columns as arrays (mapped ones, a large
        native export's, are copied) and its interning table rebuilt."""
        ops, vals, arities, kid_ids = (_owned(self.ops, ID_TYPECODE), _owned(self.vals, VALUE_TYPECODE),
                                       _owned(self.arities, ID_TYPECODE), _owned(self.kid_ids, ID_TYPECODE))
        self.ops, self.vals, self.arities, self.kid_ids = ops, vals, arities, kid_ids
        cons = {(op, vals[n] if op == LIT else self.kids(n)): n for n, op in enumerate(ops)}
        self._adding = cons, ops, vals, arities, kid_ids
        return self._adding

    def is_lit(self, node: int) -> bool:
        return self.ops[node] == LIT

    def value(self, node: int) -> int:
        assert self.ops[node] == LIT
        return self.vals[node]

    def kids(self, node: int) -> tuple[int, ...]:
        if self._kid_tuples is not None:
            return self._kid_tuples[node]
        arity = self.arities[node]
        if not arity:
            return ()
        start = self.vals[node]
        return tuple(self.kid_ids[start:start + arity])

    def to_text(self, root: int) -> str:
        """Print `(op a b)`, constants bare, literals in decimal; iterative."""
        return "".join(self.iter_text(root))

    def iter_text(self, root: int) -> Iterator[str]:
        """The pieces of to_text, in order: a shared subterm is printed at each of its uses, so the text can be
        exponentially longer than the graph (see text_length); this holds only the path to the current node."""
        stack: list[tuple[int, int]] = [(root, 0)]
        names = self.signature.names
        while stack:
            node, state = stack.pop()
            if node < 0:  # closing marker
                yield ")"
                continue
            if state:
                yield " "
            op = self.ops[node]
            if op == LIT:
                yield str(self.vals[node])
                continue
            kids = self.kids(node)
            if not kids:
                yield names[op]
                continue
            yield "(" + names[op]
            stack.append((-1, 0))
            stack.extend((kid, 1) for kid in reversed(kids))

    def fold(self, root: int, combine: Callable[[int, list[T]], T]) -> T:
        """A value per node from its children's values, children first, each shared node once, without
        recursion: `combine(node, kid_values)`."""
        memo: dict[int, T] = {}
        stack = [root]
        while stack:
            node = stack[-1]
            if node in memo:
                stack.pop()
                continue
            kids = self.kids(node)
            pending = [kid for kid in kids if kid not in memo]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            memo[node] = combine(node, [memo[kid] for kid in kids])
        return memo[root]

    def text_length(self, root: int) -> int:
        """len(to_text(root)), computed on the graph (each shared node once), never by printing."""
        names = self.signature.names

        def length(node: int, kids: list[int]) -> int:
            op = self.ops[node]
            if op == LIT:
                return len(str(self.vals[node]))
            return len(names[op]) + (2 + sum(1 + k for k in kids) if kids else 0)

        return self.fold(root, length)

    def depth(self, root: int) -> int:
        """Longest path from root to a leaf, computed over the DAG."""
        return self.fold(root, lambda _, kids: 1 + max(kids, default=0))

    def parse(self, text: str, filename: str = "<terms>") -> list[int]:
        """Parse whitespace-separated terms (`;` and `#` start comments); returns their root ids in order.

        A dedicated scanner rather than the DSL's tokenizer: term files can hold millions of tokens.
        Positions are turned into line and column only when there is an error to report.
        """
        roots: list[int] = []
        frames: list[tuple[str, int, list[int]]] = []  # (op name, offset, kids so far)
        with bulk():
            self._scan(text, filename, roots, frames)
        return roots

    def _scan(self, text: str, filename: str, roots: list[int], frames: list[tuple[str, int, list[int]]]) -> None:
        lit = self.lit
        expect_head = False
        for m in _TERM_TOKEN.finditer(text):
            tok = m.group()
            first = tok[0]
            if first in " \t\r\n;#":
                continue
            if expect_head:
                if not _IDENT.fullmatch(tok):
                    raise ParseError(_location(text, filename, m.start()),
                                     f"expected an operator name after '(', found {tok!r}")
                frames.append((tok, m.start(), []))
                expect_head = False
                continue
            if first == "(":
                expect_head = True
                continue
            if first == ")":
                if not frames:
                    raise ParseError(_location(text, filename, m.start()), "unbalanced ')'")
                name, offset, kids = frames.pop()
                node = self._app_at(text, filename, offset, name, kids)
            elif _INT.fullmatch(tok):
                value = int(tok)
                if not I64_MIN <= value <= I64_MAX:
                    raise ParseError(_location(text, filename, m.start()),
                                     f"integer literal {tok} does not fit in a signed 64-bit integer")
                node = lit(value)
            elif _IDENT.fullmatch(tok):
                node = self._app_at(text, filename, m.start(), tok, [])
            else:
                raise ParseError(_location(text, filename, m.start()), f"expected a term, found {tok!r}")
            if frames:
                frames[-1][2].append(node)
            else:
                roots.append(node)
        if expect_head or frames:
            opened = _location(text, filename, frames[-1][1]) if frames else "the end"
            raise ParseError(_location(text, filename, len(text)), f"expected ')' to close the term opened at {opened}")

    def _app_at(self, text: str, filename: str, offset: int, name: str, kids: list[int]) -> int:
        try:
            return self.app(self.signature.declare(name, len(kids)), kids)
        except TermError as exc:
            raise ParseError(_location(text, filename, offset), str(exc)) from None
