"""Property-based fuzzing of the two parsers that read user input: the rule DSL and the term syntax.

Every case must end in a result or a typed FarmError (never another exception), within a time bound
(hypothesis' deadline per case, and a hard wall-clock check for hangs). The number of cases run is
recorded and printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.errors import FarmError
from farm.lang.dsl import parse_rules
from farm.lang.terms import TermGraph
from farm.lang.transduce import transduce_patterns

from .conftest import EXAMPLES

FIGURES: dict[str, Any] = {}
HANG_SECONDS = 5.0  # a case slower than this is a hang, whatever the machine's noise
_counts = {"rule DSL cases": 0, "term cases": 0, "hangs": 0}


def typed_or_nothing(kind: str, work: Callable[[], object]) -> None:
    _counts[kind] += 1
    FIGURES["fuzz"] = dict(_counts)
    start = time.perf_counter()
    with contextlib.suppress(FarmError):
        work()
    if time.perf_counter() - start > HANG_SECONDS:
        _counts["hangs"] += 1
        FIGURES["fuzz"] = dict(_counts)
        raise AssertionError(f"{kind} case took {time.perf_counter() - start:.1f} s")


def parse_and_transduce(text: str) -> None:
    parsed = parse_rules(text, "fuzz.farm")
    transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


RULE_ALPHABET = list("rule op if const()[]{}?:,=><!-+*/%&|^0123456789abfxyz _\n#;@\"'\\<=>")


@settings(max_examples=600, deadline=2000)
@given(st.text(alphabet=st.sampled_from(RULE_ALPHABET), max_size=160))
def test_rule_text_from_the_language_alphabet(text: str) -> None:
    typed_or_nothing("rule DSL cases", lambda: parse_and_transduce(text))


@settings(max_examples=300, deadline=2000)
@given(st.text(max_size=120))
def test_rule_text_of_any_unicode(text: str) -> None:
    typed_or_nothing("rule DSL cases", lambda: parse_and_transduce(text))


ARITH = (EXAMPLES / "arith.farm").read_text()


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    """arith.farm with a few random edits: deletions, duplications, insertions of language tokens."""
    text = ARITH
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        span = draw(st.integers(0, 40))
        edit = draw(st.sampled_from(["delete", "duplicate", "insert"]))
        if edit == "delete":
            text = text[:at] + text[at + span:]
        elif edit == "duplicate":
            text = text[:at] + text[at:at + span] + text[at:]
        else:
            token = draw(st.sampled_from(["(", ")", "?x", "=>", "<=>", "if", "const(", "{", "}", "rule", ":",
                                          "99999999999999999999", "-", "\n", "@priority(3)", "op f/2"]))
            text = text[:at] + token + text[at:]
    return text


@settings(max_examples=300, deadline=3000)
@given(mutated_example())
def test_mutated_rule_files(text: str) -> None:
    typed_or_nothing("rule DSL cases", lambda: parse_and_transduce(text))


@st.composite
def well_formed_rule(draw: st.DrawFn) -> str:
    """A rule whose target uses only variables of its source: it must parse and transduce cleanly."""
    variables = ["?a", "?b", "?c"]

    def term(depth: int, allowed: list[str]) -> str:
        if depth == 0 or draw(st.booleans()):
            return draw(st.sampled_from(allowed + [str(draw(st.integers(-(2**63), 2**63 - 1)))]))
        op = draw(st.sampled_from(["f", "g", "h"]))
        arity = {"f": 1, "g": 2, "h": 3}[op]
        return f"({op} {' '.join(term(depth - 1, allowed) for _ in range(arity))})"

    source = f"(h {term(2, variables)} {term(2, variables)} {term(2, variables)})"
    bound = [v for v in variables if v in source]
    return f"rule fuzz: {source} => {term(3, bound) if bound else '0'}"


@settings(max_examples=300, deadline=2000)
@given(well_formed_rule())
def test_well_formed_rules_are_accepted(text: str) -> None:
    _counts["rule DSL cases"] += 1
    parsed = parse_rules(text, "fuzz.farm")
    assert len(transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False).rules) == 1


def parse_and_print(text: str) -> None:
    g = TermGraph()
    for root in g.parse(text, "fuzz"):
        printed = g.to_text(root)
        again = TermGraph()
        assert again.to_text(again.parse(printed)[0]) == printed  # what it prints, it reads back


@settings(max_examples=600, deadline=2000)
@given(st.text(alphabet=st.sampled_from(list("()fgx 0123456789-\n;#\t")), max_size=160))
def test_term_text_from_the_term_alphabet(text: str) -> None:
    typed_or_nothing("term cases", lambda: parse_and_print(text))


@settings(max_examples=200, deadline=2000)
@given(st.text(max_size=120))
def test_term_text_of_any_unicode(text: str) -> None:
    typed_or_nothing("term cases", lambda: parse_and_print(text))


@settings(max_examples=40, deadline=5000)
@given(st.integers(1, 50_000), st.sampled_from(["(s ", "(", "(f 1 "]), st.sampled_from(["", ")", "))"]))
def test_deep_or_unbalanced_nesting(depth: int, opener: str, tail: str) -> None:
    text = opener * depth + "0" + ")" * depth + tail
    typed_or_nothing("term cases", lambda: parse_and_print(text))
