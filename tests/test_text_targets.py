"""The Rust and OpenQASM 3 text targets, checked by their real tools."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from farm.codegen.qasm import generate_qasm
from farm.codegen.rust import generate_rust, harness_input, harness_output
from farm.errors import CodegenError, NonTermination
from farm.interp import Interpreter
from farm.matchtree import NODE_BUDGET
from farm.terms import TermGraph
from farm.transduce import RuleSet
from farm.verify import TermGenerator

from .conftest import EXAMPLES, ruleset_of
from .test_native import example

RUSTC = shutil.which("rustc") or str(Path.home() / ".cargo/bin/rustc")


def rust_binary(ruleset: RuleSet, tmp_path: Path, tree_budget: int = NODE_BUDGET) -> Path:
    if not Path(RUSTC).exists():
        pytest.skip("rustc is not installed")
    source = tmp_path / "rules.rs"
    source.write_text(generate_rust(ruleset, with_main=True, tree_budget=tree_budget))
    binary = tmp_path / "rules"
    proc = subprocess.run([RUSTC, "-O", "--edition", "2021", "-o", str(binary), str(source)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return binary


def interpreter_texts(ruleset: RuleSet, text: str, fuel: int) -> tuple[list[str], list[int]]:
    g = TermGraph(ruleset.make_signature())
    result = Interpreter(ruleset).rewrite(g, g.parse(text), fuel)
    texts = [f"error {type(o).__name__}" if isinstance(o, NonTermination) else g.to_text(o) for o in result.outcomes]
    return texts, result.firings


@pytest.mark.parametrize("name, budget", [("arith", NODE_BUDGET), ("bool", NODE_BUDGET), ("arith", 3)])
def test_rust_target_compiles_and_rewrites_like_the_interpreter(tmp_path: Path, name: str, budget: int) -> None:
    ruleset = example(name)
    binary = rust_binary(ruleset, tmp_path, budget)
    gen = TermGenerator(ruleset, random.Random(5))
    g = TermGraph(ruleset.make_signature())
    sample = (EXAMPLES / f"{name}.terms").read_text()
    roots = g.parse(sample) + [gen.term(g) for _ in range(300)]
    text = " ".join(g.to_text(r) for r in roots)
    g2 = TermGraph(ruleset.make_signature())
    roots2 = g2.parse(text)
    proc = subprocess.run([str(binary)], input=harness_input(ruleset, g2, roots2, 10_000), capture_output=True,
                          text=True, check=True)
    results, counters = harness_output(ruleset, g2, proc.stdout)
    expected, firings = interpreter_texts(ruleset, text, 10_000)
    assert results == expected and counters == firings and sum(firings) > 0


def test_rust_target_reports_cycles(tmp_path: Path) -> None:
    ruleset = ruleset_of("rule swap [bidirectional]: (f a) => (f b)")
    binary = rust_binary(ruleset, tmp_path)
    g = TermGraph(ruleset.make_signature())
    roots = g.parse("(f a) (g b)")
    proc = subprocess.run([str(binary)], input=harness_input(ruleset, g, roots, 100), capture_output=True,
                          text=True, check=True)
    results, _ = harness_output(ruleset, g, proc.stdout)
    assert results[0].startswith("error -3 ") and results[1] == "(g b)"


def test_qasm_target_emits_gate_pairs_the_reference_parser_accepts() -> None:
    ruleset = ruleset_of("""rule hh: (h (h ?q)) => ?q
                            rule xx: (x (x ?q)) => (id ?q)
                            rule hxh: (h (x (h ?q))) => (z ?q)
                            rule ss: (s (s ?q)) => (z ?q)""")
    text = generate_qasm(ruleset)
    assert "gate rule_0_source q { h q; h q; }" in text
    assert "gate rule_2_source q { h q; x q; h q; }" in text and "gate rule_2_target q { z q; }" in text
    openqasm3 = pytest.importorskip("openqasm3")
    program = openqasm3.parse(text)
    assert len([s for s in program.statements if type(s).__name__ == "QuantumGateDefinition"]) == 8


@pytest.mark.parametrize("rules, message", [
    ("rule a: (cx ?p ?q) => ?q", "outside the OpenQASM gate subset"),
    ("rule a: (h ?q) if const(?q) => ?q", "guards cannot be expressed"),
    ("rule a: (h 0) => 0", "must end in a wire variable"),
])
def test_qasm_target_refuses_rules_outside_the_subset(rules: str, message: str) -> None:
    with pytest.raises(CodegenError, match=message):
        generate_qasm(ruleset_of(rules))
