"""Parser of the rule language (docs/rules.md). Errors name file, line and column."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from farm.errors import ParseError, SourceLocation, UnknownOperatorError
from farm.inputs import RULES, read_input_text
from farm.lang.lexer import Token, TokenStream
from farm.lang.rules import (
    COMPARE_OPS,
    App,
    BinOp,
    Compare,
    Computed,
    Constraint,
    IsConst,
    Lit,
    LitExpr,
    Neg,
    PatternExpr,
    Polarity,
    TermCondition,
    TopologicalPattern,
    Var,
)

_NEGATE, _OPEN = "unary -", "("
KEYWORDS = frozenset({"rule", "op", "if", "const"})
ARROWS = {"=>": Polarity.FORWARD, "<=": Polarity.BACKWARD, "<=>": Polarity.BIDIRECTIONAL}
# Binary operators of computed literals, loosest first (C precedence).
PRECEDENCE = [("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"), ("*", "/", "%")]
_BINARY_LEVEL = {op: level for level, ops in enumerate(PRECEDENCE) for op in ops}


@dataclass
class RuleFile:
    """A parsed rule file: its patterns in file order and its declared operators."""

    path: str
    patterns: list[TopologicalPattern] = field(default_factory=list)
    declared_ops: dict[str, int] = field(default_factory=dict)


def parse_rules(text: str, filename: str = "<rules>") -> RuleFile:
    return _Parser(text, filename).parse_file()


def load_rules(path: str | Path) -> RuleFile:
    return parse_rules(read_input_text(path, RULES), str(path))


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        self.s = TokenStream(text, filename)
        self.file = RuleFile(filename)
        self._op_locations: list[tuple[str, int, SourceLocation]] = []
        self._declared_at: dict[str, SourceLocation] = {}

    def parse_file(self) -> RuleFile:
        while self.s.peek().kind != "EOF":
            tok = self.s.peek()
            if self.s.accept("rule"):
                self.file.patterns.append(self.parse_rule(tok.location))
            elif self.s.accept("op"):
                self.parse_op_decls()
            else:
                raise ParseError(tok.location, f"expected 'rule' or 'op', found {tok.describe()}")
        self.check_declared()
        return self.file

    def parse_op_decls(self) -> None:
        while True:
            name = self.s.expect_kind("IDENT", "an operator name")
            self.s.expect("/", "'/' and the arity, as in 'op cons/2'")
            arity = self.s.expect_kind("INT", "the operator's arity")
            if int(arity.text) < 0:
                raise ParseError(arity.location, "an arity cannot be negative")
            self._declare(name.text, int(arity.text), name.location)
            if not self.s.accept(","):
                return

    def _declare(self, name: str, arity: int, location: SourceLocation) -> None:
        """A repeated declaration with the same arity is harmless; another arity is an error, not last-wins."""
        earlier = self._declared_at.get(name)
        if earlier is not None and self.file.declared_ops[name] != arity:
            raise ParseError(location, f"operator {name!r} is declared again as {name}/{arity}; it was declared "
                                       f"{name}/{self.file.declared_ops[name]} at {earlier}")
        self.file.declared_ops[name] = arity
        self._declared_at.setdefault(name, location)

    def parse_rule(self, location: SourceLocation) -> TopologicalPattern:
        name = self.s.expect_kind("IDENT", "a rule name")
        priority, polarity = self.parse_attributes()
        self.s.expect(":", "':' after the rule name")
        source = self.parse_pattern()
        guards = self.parse_guards()
        arrow = self.s.peek()
        if arrow.text not in ARROWS or arrow.kind != "PUNCT":
            raise ParseError(arrow.location, f"expected '=>', '<=' or '<=>', found {arrow.describe()}")
        self.s.next()
        target = self.parse_pattern()
        guards += self.parse_guards()
        if ARROWS[arrow.text] != Polarity.FORWARD:
            if polarity not in (None, ARROWS[arrow.text]):
                raise ParseError(arrow.location, f"arrow {arrow.text!r} contradicts the [{polarity.value}] attribute")
            polarity = ARROWS[arrow.text]
        return TopologicalPattern(name.text, source, target, tuple(guards), polarity or Polarity.FORWARD,
                                  priority, location)

    def parse_attributes(self) -> tuple[int, Polarity | None]:
        priority, polarity = 0, None
        if not self.s.accept("["):
            return priority, polarity
        while True:
            tok = self.s.expect_kind("IDENT", "'priority N', 'forward', 'backward' or 'bidirectional'")
            if tok.text == "priority":
                priority = int(self.s.expect_kind("INT", "the priority, an integer").text)
            elif tok.text in {p.value for p in Polarity}:
                polarity = Polarity(tok.text)
            else:
                raise ParseError(tok.location, f"unknown rule attribute {tok.text!r}; expected 'priority N', "
                                               "'forward', 'backward' or 'bidirectional'")
            if not self.s.accept(","):
                break
        self.s.expect("]", "']' to close the attributes")
        return priority, polarity

    def parse_guards(self) -> list[Constraint]:
        if not self.s.accept("if"):
            return []
        guards = [self.parse_guard()]
        while self.s.accept(","):
            guards.append(self.parse_guard())
        return guards

    def parse_guard(self) -> Constraint:
        tok = self.s.peek()
        if tok.text == "const" and self.s.peek(1).text == "(":
            self.s.next()
            self.s.next()
            var = self.s.expect_kind("VAR", "a variable in const(?x)")
            self.s.expect(")")
            return IsConst(Var(var.text))
        left = self.parse_pattern()
        op = self.s.next()
        if op.kind == "PUNCT" and op.text in COMPARE_OPS:
            right = self.parse_pattern()
            for side, t in ((left, tok), (right, op)):
                if not isinstance(side, (Var, Lit)):
                    raise ParseError(t.location, f"'{op.text}' compares a variable or integer, not {side}")
            return Compare(op.text, left, right)  # type: ignore[arg-type]
        if op.kind == "PUNCT" and op.text in ("=", "<>"):
            return TermCondition(left, self.parse_pattern(), op.text == "=")
        raise ParseError(op.location, f"expected a comparison (== != < <= > >=) or a condition (= <>), "
                                      f"found {op.describe()}")

    def parse_pattern(self) -> PatternExpr:
        """A pattern, with an explicit stack of open applications: nesting depth is bounded by memory only."""
        frames: list[tuple[Token, Token, list[PatternExpr]]] = []  # '(' token, operator token, arguments so far
        while True:
            while frames and (self.s.at(")") or self.s.peek().kind == "EOF"):
                if not self.s.at(")"):
                    raise ParseError(self.s.peek().location,
                                     f"expected ')' to close the pattern at {frames[-1][0].location}")
                self.s.next()
                _, head, args = frames.pop()
                self._op_locations.append((head.text, len(args), head.location))
                closed = App(head.text, tuple(args))
                if not frames:
                    return closed
                frames[-1][2].append(closed)
            tok = self.s.next()
            if tok.text == "(":
                frames.append((tok, self.s.expect_kind("IDENT", "an operator name after '('"), []))
                continue
            expr = self.parse_pattern_atom(tok)
            if not frames:
                return expr
            frames[-1][2].append(expr)

    def parse_pattern_atom(self, tok: Token) -> PatternExpr:
        if tok.kind == "VAR":
            return Var(tok.text)
        if tok.kind == "INT":
            return Lit(int(tok.text))
        if tok.kind == "IDENT" and tok.text not in KEYWORDS:
            self._op_locations.append((tok.text, 0, tok.location))
            return App(tok.text)
        if tok.text == "{":
            expr = self.parse_arith()
            self.s.expect("}", "'}' to close the computed literal")
            return Computed(expr)
        raise ParseError(tok.location, f"expected a pattern (?var, integer, operator or '('), found {tok.describe()}")

    def parse_arith(self) -> LitExpr:
        """A computed literal's expression by operator precedence (shunting-yard), without recursion: binary
        operators are left-associative at the levels of PRECEDENCE; unary '-' and '(' bind to one operand."""
        operands: list[LitExpr] = []
        pending: list[str] = []  # NEGATE, OPEN or a binary operator
        while True:
            tok = self.s.next()
            if tok.kind == "PUNCT" and tok.text in ("-", "("):
                pending.append(_NEGATE if tok.text == "-" else _OPEN)
                continue
            if tok.kind not in ("VAR", "INT"):
                raise ParseError(tok.location, "expected ?var, integer or '(' in a computed literal, "
                                               f"found {tok.describe()}")
            operands.append(Var(tok.text) if tok.kind == "VAR" else Lit(int(tok.text)))
            while True:
                _negate_pending(operands, pending)
                nxt = self.s.peek()
                level = _BINARY_LEVEL.get(nxt.text) if nxt.kind == "PUNCT" else None
                if level is not None:
                    _reduce(operands, pending, level)
                    pending.append(self.s.next().text)
                    break
                if _OPEN in pending and self.s.at(")"):
                    _reduce(operands, pending, 0)
                    pending.pop()
                    self.s.next()
                    continue
                if _OPEN in pending:
                    self.s.expect(")")
                _reduce(operands, pending, 0)
                return operands[0]

    def check_declared(self) -> None:
        """With `op` declarations present, every operator a rule uses must be declared."""
        declared = self.file.declared_ops
        if not declared:
            return
        for name, arity, location in self._op_locations:
            if name not in declared:
                known = ", ".join(f"{n}/{a}" for n, a in sorted(declared.items()))
                raise UnknownOperatorError(f"{location}: unknown operator {name!r}; declared: {known}")
            if declared[name] != arity:
                raise ParseError(location, f"operator {name!r} is declared with arity {declared[name]}, "
                                           f"used here with {arity}")




def _negate_pending(operands: list[LitExpr], pending: list[str]) -> None:
    """Unary minus binds to the operand just completed: `-5` is the literal -5, `-?x` is Neg(?x)."""
    while pending and pending[-1] == _NEGATE:
        pending.pop()
        operand = operands.pop()
        operands.append(Lit(-operand.value) if isinstance(operand, Lit) and operand.value > 0 else Neg(operand))


def _reduce(operands: list[LitExpr], pending: list[str], level: int) -> None:
    """Apply the pending binary operators that bind at least as tightly as `level` (left associativity)."""
    while pending and pending[-1] in _BINARY_LEVEL and _BINARY_LEVEL[pending[-1]] >= level:
        right, left = operands.pop(), operands.pop()
        operands.append(BinOp(pending.pop(), left, right))


__all__ = ["RuleFile", "load_rules", "parse_rules"]
