from __future__ import annotations

import time

import pytest

from farm.errors import ParseError
from farm.lang.terms import Signature, TermGraph, wrap_i64


def test_hash_consing_shares_equal_subterms() -> None:
    g = TermGraph()
    a, b = g.parse("(f (g x) (g x)) (g x)")
    assert g.kids(a)[0] == g.kids(a)[1] == b
    assert len(g) == 3  # x, (g x) and (f ...): nothing stored twice


def test_print_parse_round_trip() -> None:
    g = TermGraph()
    text = "(add (mul x -3) (neg 9223372036854775807)) nil (cons 1 nil)"
    roots = g.parse(text)
    assert " ".join(g.to_text(r) for r in roots) == text


def test_arity_clash_in_terms_names_the_place() -> None:
    g = TermGraph(Signature.of([("add", 2)]))
    with pytest.raises(ParseError, match=r"t.terms:2:2: operator 'add' has arity 2, used here with 1"):
        g.parse("(add 1 2)\n(add 1)", "t.terms")


def test_unbalanced_parentheses() -> None:
    with pytest.raises(ParseError, match="expected '\\)' to close"):
        TermGraph().parse("(f (g x)", "t")
    with pytest.raises(ParseError, match="unbalanced"):
        TermGraph().parse("x)", "t")


def test_million_level_term_parses_prints_and_measures_depth() -> None:
    depth = 1_000_000
    text = "(s " * depth + "z" + ")" * depth
    start = time.perf_counter()
    g = TermGraph()
    (root,) = g.parse(text)
    assert g.depth(root) == depth + 1
    assert g.to_text(root) == text
    assert time.perf_counter() - start < 60


def test_wrap_i64() -> None:
    assert wrap_i64(2**63) == -(2**63)
    assert wrap_i64(-(2**63) - 1) == 2**63 - 1


