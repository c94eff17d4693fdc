"""Tokenizer shared by the rule DSL and the term syntax; every token knows its file, line and column."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from farm.errors import ParseError, SourceLocation

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Token:
    """One token of a rule or term file, with where it starts."""

    kind: str  # IDENT, VAR, INT, PUNCT, EOF
    text: str
    location: SourceLocation

    def describe(self) -> str:
        return "end of input" if self.kind == "EOF" else repr(self.text)


_PUNCT = ["<=>", "=>", "<=", ">=", "==", "!=", "<>", "<<", ">>", "(", ")", "[", "]", "{", "}", ":", ",",
          "=", "<", ">", "+", "-", "*", "/", "%", "&", "|", "^", "~"]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.']*")
_INT = re.compile(r"-?[0-9]+")


def tokenize(text: str, filename: str) -> Iterator[Token]:
    """Yield tokens; `#` and `;` start comments. A `-digits` outside braces is a negative literal."""
    line, line_start, pos, braces = 1, 0, 0, 0
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch == "\n":
            line, line_start, pos = line + 1, pos + 1, pos + 1
            continue
        if ch in " \t\r":
            pos += 1
            continue
        if ch in "#;":
            end = text.find("\n", pos)
            pos = n if end < 0 else end
            continue
        loc = SourceLocation(filename, line, pos - line_start + 1)
        if ch == "?":
            m = _IDENT.match(text, pos + 1)
            if not m:
                raise ParseError(loc, "expected a variable name after '?'")
            yield Token("VAR", m.group(), loc)
            pos = m.end()
            continue
        m = _INT.match(text, pos)
        if m and (ch != "-" or braces == 0):
            value = int(m.group())
            if not I64_MIN <= value <= I64_MAX:
                raise ParseError(loc, f"integer literal {m.group()} does not fit in a signed 64-bit integer")
            yield Token("INT", m.group(), loc)
            pos = m.end()
            continue
        m = _IDENT.match(text, pos)
        if m:
            yield Token("IDENT", m.group(), loc)
            pos = m.end()
            continue
        for p in _PUNCT:
            if text.startswith(p, pos):
                braces += (p == "{") - (p == "}")
                yield Token("PUNCT", p, loc)
                pos += len(p)
                break
        else:
            raise ParseError(loc, f"unexpected character {ch!r}")
    yield Token("EOF", "", SourceLocation(filename, line, pos - line_start + 1))


class TokenStream:
    """A cursor over tokens with the expect/accept helpers both parsers use."""

    def __init__(self, text: str, filename: str) -> None:
        self._tokens = list(tokenize(text, filename))
        self._pos = 0

    def peek(self, offset: int = 0) -> Token:
        return self._tokens[min(self._pos + offset, len(self._tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self._pos = min(self._pos + 1, len(self._tokens) - 1)
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok.kind in ("PUNCT", "IDENT") and tok.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.next()
            return True
        return False

    def expect(self, text: str, what: str | None = None) -> Token:
        tok = self.peek()
        if not self.at(text):
            raise ParseError(tok.location, f"expected {what or repr(text)}, found {tok.describe()}")
        return self.next()

    def expect_kind(self, kind: str, what: str) -> Token:
        tok = self.peek()
        if tok.kind != kind:
            raise ParseError(tok.location, f"expected {what}, found {tok.describe()}")
        return self.next()
