"""Decision trees: exact first-match semantics, bounded size, and the chunked fallback when a tree would blow up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm.cache.engine import Engine, load_native
from farm.compiler.codegen.llvm import generate_llvm_ir
from farm.compiler.matchtree import Chain, Leaf, Switch, Tree, build_tree
from farm.compiler.toolchain import Toolchain
from farm.lang.transduce import RuleSet
from farm.runtime.loader import NativeRuleset
from farm.runtime.verify import differential

from .conftest import ruleset_of
from .test_native import example


def blowup_ruleset(n: int) -> RuleSet:
    """Rule i tests column i and has a guard, so every leaf keeps the rows after it: without a budget
    the decision tree has 2^n leaves."""
    args = [" ".join("1" if j == i else "?v" + str(j) for j in range(n)) for i in range(n)]
    return ruleset_of("\n".join(f"rule r{i}: (f {a}) if ?v{(i + 1) % n} != 7 => {i}" for i, a in enumerate(args)))


def tree_size(tree: Tree) -> int:
    """Nodes of the tree, Chain nodes not counted."""
    size, todo = 0, [tree]
    while todo:
        node = todo.pop()
        size += not isinstance(node, Chain)
        if isinstance(node, Switch):
            todo += [t for _, t in node.cases] + [node.default]
        elif isinstance(node, Leaf) and node.otherwise:
            todo.append(node.otherwise)
        elif isinstance(node, Chain):
            todo += [node.first, node.rest]
    return size


def test_tree_for_a_blowup_matrix_stays_bounded() -> None:
    rs = blowup_ruleset(16)
    start = time.perf_counter()
    tree = build_tree(list(rs.rules), budget=4000)
    assert time.perf_counter() - start < 10
    assert isinstance(tree, Chain) and tree_size(tree) < 16 * 4000


@pytest.mark.parametrize("budget", [3, 12, 4000])
def test_chunked_trees_keep_first_match_semantics(tmp_path: Path, budget: int) -> None:
    for rs in (example("arith"), blowup_ruleset(6)):
        ir = generate_llvm_ir(rs, "x86_64-unknown-linux-gnu", tree_budget=budget)
        build = Toolchain(tmp_path).build_parts([("module", ir)], Engine().builder.target("x86-64"), 0)
        native = NativeRuleset(build.so_path, rs)
        report = differential(rs, native, cases=400, seed=budget, fuel=2000)
        assert report.ok, report.mismatches[:3]


def test_blowup_ruleset_compiles_and_matches_natively(session_engine: Engine) -> None:
    rs = blowup_ruleset(12)
    native = load_native(rs, session_engine.compile(rs, "blowup12"))
    from farm.lang.terms import TermGraph

    g = TermGraph(rs.make_signature())
    roots = g.parse("(f 0 0 0 0 0 0 0 0 0 0 0 1) (f 0 0 1 0 0 0 0 0 0 0 0 1) (f 0 0 0 0 0 0 0 0 0 0 0 0)")
    assert native.rewrite(g, roots).texts() == ["11", "2", "(f 0 0 0 0 0 0 0 0 0 0 0 0)"]
