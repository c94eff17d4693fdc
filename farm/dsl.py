"""Parser of the rule language (docs/rules.md). Errors name file, line and column."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from farm.errors import ParseError, SourceLocation, UnknownOperatorError
from farm.inputs import RULES, read_input_text
from farm.lexer import TokenStream
from farm.rules import (
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

KEYWORDS = frozenset({"rule", "op", "if", "const"})
ARROWS = {"=>": Polarity.FORWARD, "<=": Polarity.BACKWARD, "<=>": Polarity.BIDIRECTIONAL}
# Binary operators of computed literals, loosest first (C precedence).
PRECEDENCE = [("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"), ("*", "/", "%")]


@dataclass
class RuleFile:
    path: str
    patterns: list[TopologicalPattern] = field(default_factory=list)
    declared_ops: dict[str, int] = field(default_factory=dict)


def parse_rules(text: str, filename: str = "<rules>") -> RuleFile:
    try:
        return _Parser(text, filename).parse_file()
    except RecursionError:
        raise ParseError(SourceLocation(filename, 1, 1), "pattern nested too deeply") from None


def load_rules(path: str | Path) -> RuleFile:
    return parse_rules(read_input_text(path, RULES), str(path))


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        self.s = TokenStream(text, filename)
        self.file = RuleFile(filename)
        self._op_locations: list[tuple[str, int, SourceLocation]] = []

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
            self.file.declared_ops[name.text] = int(arity.text)
            if not self.s.accept(","):
                return

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
        tok = self.s.next()
        if tok.kind == "VAR":
            return Var(tok.text)
        if tok.kind == "INT":
            return Lit(int(tok.text))
        if tok.kind == "IDENT" and tok.text not in KEYWORDS:
            self._op_locations.append((tok.text, 0, tok.location))
            return App(tok.text)
        if tok.text == "(":
            head = self.s.expect_kind("IDENT", "an operator name after '('")
            args: list[PatternExpr] = []
            while not self.s.at(")"):
                if self.s.peek().kind == "EOF":
                    raise ParseError(self.s.peek().location, f"expected ')' to close the pattern at {tok.location}")
                args.append(self.parse_pattern())
            self.s.next()
            self._op_locations.append((head.text, len(args), head.location))
            return App(head.text, tuple(args))
        if tok.text == "{":
            expr = self.parse_arith(0)
            self.s.expect("}", "'}' to close the computed literal")
            return Computed(expr)
        raise ParseError(tok.location, f"expected a pattern (?var, integer, operator or '('), found {tok.describe()}")

    def parse_arith(self, level: int) -> LitExpr:
        if level == len(PRECEDENCE):
            return self.parse_arith_atom()
        left = self.parse_arith(level + 1)
        while self.s.peek().kind == "PUNCT" and self.s.peek().text in PRECEDENCE[level]:
            op = self.s.next().text
            left = BinOp(op, left, self.parse_arith(level + 1))
        return left

    def parse_arith_atom(self) -> LitExpr:
        tok = self.s.next()
        if tok.kind == "VAR":
            return Var(tok.text)
        if tok.kind == "INT":
            return Lit(int(tok.text))
        if tok.text == "-":
            operand = self.parse_arith_atom()
            if isinstance(operand, Lit) and operand.value > 0:
                return Lit(-operand.value)
            return Neg(operand)
        if tok.text == "(":
            expr = self.parse_arith(0)
            self.s.expect(")")
            return expr
        raise ParseError(tok.location, f"expected ?var, integer or '(' in a computed literal, found {tok.describe()}")

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




__all__ = ["RuleFile", "load_rules", "parse_rules"]
