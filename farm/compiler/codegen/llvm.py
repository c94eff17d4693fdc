"""Whole-ruleset LLVM IR: the runtime (heap, collector, memo; farm/compiler/codegen/runtime.py) and the rules' code
(one function per defined operator, printing its match program from farm/compiler/matchprog.py, and the manifest;
farm/compiler/codegen/operators.py). The exported C ABI is
declared in farm/compiler/codegen/abi.py and described in docs/abi.md. Rule and operator names never reach an IR
identifier: functions are named by operator index, and the module name is fixed.

A ruleset is emitted as separate modules, so that objects can be cached and relinked:
  runtime   the same for every ruleset (per target, CPU and -O level)
  manifest  dispatch of input rows (farm_call), counts, arities, first rules, memo width, fingerprint
  chunk<i>  the functions of a group of operators (farm_norm_op<k>, one per defined operator)
A small ruleset is runtime + one module ("rules"), whose operator functions are private to it so that LLVM
can inline and specialise calls between them. Changing one rule of a large ruleset recompiles its chunk's
object and the manifest, then relinks. `single_module()` puts all of them in one module (for `farm
codegen`, llvmlite checks and seed-API users).

Semantics follow docs/rules.md step for step, as farm/semantics/interp.py does: both take the memo policy and the
evaluation order from farm/semantics/callgraph.py.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import cache

from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import ABI_VERSION
from farm.compiler.codegen.irbuild import quick
from farm.compiler.codegen.operators import RulesModule
from farm.compiler.codegen.runtime import RuntimeModule
from farm.compiler.matchtree import NODE_BUDGET
from farm.lang.transduce import RuleSet

CHUNK_RULES = 64


class LLVMCodegen:
    """Builds the IR modules of one ruleset."""

    def __init__(self, ruleset: RuleSet, triple: str | None = None, tree_budget: int = NODE_BUDGET,
                 quick: bool = False) -> None:
        self.ruleset = ruleset
        self.triple = triple
        self.tree_budget = tree_budget
        # Code for the -O0 in-memory compile (tier 0): C calls (operators.norm_convention), shaped for FastISel
        # (irbuild.quick). Pieces of one compile only: never a library's parts.
        self.quick = quick

    def _module(self) -> ir.Module:
        m = ir.Module(name="farm")
        if self.triple:
            m.triple = self.triple
        if self.quick:
            quick(m)
        return m

    def _rules(self, module: ir.Module, internal: bool) -> RulesModule:
        return RulesModule(module, self.ruleset, internal, self.tree_budget)

    def chunks(self, limit: int = CHUNK_RULES) -> list[list[str]]:
        """Root operators grouped, in signature order, into chunks of at most `limit` rules (or one operator's):
        one object each. Per-chunk rather than per-operator objects keep the number of tool runs low."""
        by_root = self.ruleset.rules_by_root()
        out: list[list[str]] = []
        size = 0
        for op_name, _ in self.ruleset.signature:
            if op_name not in by_root:
                continue
            if not out or size + len(by_root[op_name]) > limit:
                out.append([])
                size = 0
            out[-1].append(op_name)
            size += len(by_root[op_name])
        return out

    def parts(self) -> list[tuple[str, str]]:
        """(name, IR text) of every module to compile and link for this ruleset, runtime first. A small
        ruleset is one module besides the runtime; a large one has a manifest and one module per chunk."""
        chunks = self.chunks()
        if len(chunks) <= 1:
            return [("runtime", runtime_ir(self.triple)), self.rules_part(chunks[0] if chunks else [])]
        return [("runtime", runtime_ir(self.triple)), self.manifest_part(),
                *(self.chunk_part(i, chunk) for i, chunk in enumerate(chunks))]

    def rules_part(self, op_names: list[str]) -> tuple[str, str]:
        """A small ruleset's one module: the manifest and every operator, private to it."""
        module = self._module()
        rules = self._rules(module, internal=True)
        rules.emit_manifest()
        for op_name in op_names:
            rules.emit_operator(op_name)
        return "rules", str(module)

    def manifest_part(self) -> tuple[str, str]:
        module = self._module()
        self._rules(module, internal=False).emit_manifest()
        return "manifest", str(module)

    def chunk_part(self, index: int, op_names: list[str]) -> tuple[str, str]:
        """Chunk `index` of chunks(): the functions of these operators (independent of the other chunks, so
        chunks can be generated apart, farm/compiler/parallel.py)."""
        module = self._module()
        rules = self._rules(module, internal=False)
        for op_name in op_names:
            rules.emit_operator(op_name)
        return f"chunk{index}", str(module)

    def single_module(self) -> str:
        module = self._module()
        RuntimeModule(module).emit()
        rules = self._rules(module, internal=True)
        rules.emit_manifest()
        for op_name in self.ruleset.rules_by_root():
            rules.emit_operator(op_name)
        return str(module)


_IR_MEMO: OrderedDict[tuple[str, str | None, int, str], object] = OrderedDict()
_IR_MEMO_SIZE = 64
_IR_MEMO_LOCK = threading.Lock()


def _memo(kind: str, ruleset: RuleSet, triple: str | None, tree_budget: int, make: Callable[[], object]) -> object:
    """IR is a pure function of the ruleset: memoised by fingerprint, so a cache hit does not pay for
    code generation just to compute its key."""
    key = (ruleset.fingerprint(), triple, tree_budget, kind)
    with _IR_MEMO_LOCK:
        value = _IR_MEMO.get(key)
    if value is None:
        value = make()  # outside the lock: two threads may both generate a new ruleset's IR, never corrupt the memo
    _remember(key, value)
    return value


def _remember(key: tuple[str, str | None, int, str], value: object) -> None:
    with _IR_MEMO_LOCK:  # a tiered engine's background build asks for the IR its caller generated
        _IR_MEMO[key] = value
        _IR_MEMO.move_to_end(key)
        while len(_IR_MEMO) > _IR_MEMO_SIZE:
            _IR_MEMO.popitem(last=False)


def remember_parts(ruleset: RuleSet, triple: str | None, parts: list[tuple[str, str]],
                   tree_budget: int = NODE_BUDGET) -> None:
    """Parts generated elsewhere (chunks in worker processes): what ruleset_parts returns from now on."""
    _remember((ruleset.fingerprint(), triple, tree_budget, "parts"), parts)


@cache
def runtime_ir(triple: str | None) -> str:
    """The ruleset-independent module: arena, hash-consing, normaliser and the exported API."""
    module = ir.Module(name="farm")
    if triple:
        module.triple = triple
    RuntimeModule(module).emit()
    return str(module)


def generate_llvm_ir(ruleset: RuleSet, triple: str | None = None, tree_budget: int = NODE_BUDGET) -> str:
    """The whole ruleset as one module (opaque pointers; accepted by llvm-16 tools and llvmlite)."""
    return _memo("single", ruleset, triple, tree_budget,
                 lambda: LLVMCodegen(ruleset, triple, tree_budget).single_module())  # type: ignore[return-value]


def ruleset_parts(ruleset: RuleSet, triple: str | None = None,
                  tree_budget: int = NODE_BUDGET) -> list[tuple[str, str]]:
    """The ruleset as separately compiled modules: runtime, then rules, or manifest and chunks."""
    return _memo("parts", ruleset, triple, tree_budget,
                 lambda: LLVMCodegen(ruleset, triple, tree_budget).parts())  # type: ignore[return-value]


__all__ = ["ABI_VERSION", "LLVMCodegen", "generate_llvm_ir", "remember_parts", "ruleset_parts", "runtime_ir"]
