"""farm's IR writer (farm/compiler/codegen/textir.py) prints what llvmlite.ir prints for the same builder calls, byte
for byte: random programs of builder calls are played on both, and the modules' text compared. The artifacts' content
keys are hashes of that text, so this is also what keeps every cached library's key across the switch of writer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llvmlite.binding as llvm
from hypothesis import given, settings
from hypothesis import strategies as st
from llvmlite import ir as llvmlite_ir

from farm.compiler.codegen import textir
from farm.compiler.codegen.llvm import LLVMCodegen
from farm.lang.transduce import RuleSet

from .conftest import EXAMPLES, ruleset_of

BLOCK_NAMES = ["", "entry", "loop", "body", "done", "entry.if", "x" * 60]
BINOPS = ["add", "sub", "mul", "and_", "or_", "xor", "shl", "lshr", "ashr", "sdiv", "srem"]
CMPS = ["==", "!=", "<", "<=", ">", ">="]

Step = tuple[str, int, int, int]
steps = st.lists(st.tuples(st.sampled_from(["binop", "icmp", "select", "cast", "memory", "gep", "call", "if_then",
                                            "if_else", "block", "switch", "not", "meta", "atomic"]),
                           st.integers(0, 10**6), st.integers(0, 10**6), st.integers(-2**40, 2**40)),
                 max_size=40)


def play(ir: Any, program: list[Step], triple: str) -> str:
    """The builder calls of `program` on the IR module `ir` (llvmlite.ir or textir); the module's text."""
    i64, ptr = ir.IntType(64), ir.PointerType()
    module = ir.Module(name="farm")
    module.triple = triple
    helper = ir.Function(module, ir.FunctionType(i64, [ptr, i64]), "helper")
    helper.attributes.add("nounwind")
    helper.calling_convention = "ghccc"  # as the operators' functions (operators.norm_convention)
    fn = ir.Function(module, ir.FunctionType(i64, [ptr, i64, i64]), "f")
    fn.attributes.add("nounwind")
    fn.attributes.add("alwaysinline")
    fn.linkage = "internal"
    entry = fn.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    ints: list[Any] = [fn.args[1], fn.args[2]]
    root = module.add_metadata([ir.MetaDataString(module, "farm tbaa")])
    node = module.add_metadata([ir.MetaDataString(module, "farm heap"), root, ir.Constant(i64, 0)])
    tag = module.add_metadata([node, node, ir.Constant(i64, 0)])
    for kind, x, y, k in program:
        a, c = ints[x % len(ints)], ints[y % len(ints)]
        const = ir.Constant(i64, k)
        if kind == "binop":
            ints.append(getattr(b, BINOPS[x % len(BINOPS)])(a, const if y % 2 else c))
        elif kind == "icmp":
            flag = (b.icmp_signed if y % 2 else b.icmp_unsigned)(CMPS[x % len(CMPS)], a, c)
            ints.append(b.select(flag, a, const))
        elif kind == "select":
            ints.append(b.select(b.icmp_signed("<", a, const), c, a))
        elif kind == "cast":
            narrow = b.trunc(a, ir.IntType(32))
            ints.append(b.sext(narrow, i64) if y % 2 else b.zext(narrow, i64))
            ints.append(b.sext(ints[-1], i64))  # already i64: no instruction
        elif kind == "memory":
            slot = b.alloca(i64, size=(x % 3) or None)
            slot.type = ptr
            b.store(a, slot).set_metadata("tbaa", tag)
            ints.append(b.load(slot, typ=i64))
            ints.append(b.ptrtoint(b.inttoptr(b.ptrtoint(slot, i64), ptr), i64))
        elif kind == "gep":
            at = b.gep(fn.args[0], [ir.Constant(i64, x % 7)], inbounds=bool(y % 2), source_etype=i64)
            ints.append(b.load(at, typ=i64))
            ints[-1].set_metadata("tbaa", module.add_metadata([node, node, ir.Constant(i64, 0)]))  # `tag` again
        elif kind == "atomic":
            at = b.gep(fn.args[0], [ir.Constant(i64, x % 7)], inbounds=True, source_etype=i64)
            ordering = ["monotonic", "release"][y % 2]
            if hasattr(ir, "instructions"):  # llvmlite's builder checks a pointee, which an opaque pointer has not
                b._insert(ir.instructions.StoreAtomicInstr(b.block, a, at, ordering, 8))
            else:
                b.store_atomic(a, at, ordering, 8)
            ints.append(b.load_atomic(at, ["monotonic", "acquire"][x % 2], 8, typ=i64))
        elif kind == "call":
            ints.append(b.call(helper, [fn.args[0], a]))
        elif kind in ("if_then", "if_else"):
            likely = [None, True, False][x % 3]
            if kind == "if_then":
                with b.if_then(b.icmp_signed(">", a, const), likely=likely):
                    if y % 2:
                        b.ret(c)
                    else:
                        b.add(a, c)
            else:
                with b.if_else(b.icmp_signed(">", a, const), likely=likely) as (then, otherwise):
                    with then:
                        b.ret(a)
                    with otherwise:
                        b.mul(a, c)
            ints = [fn.args[1], fn.args[2]]  # values of the branches do not dominate what follows
        elif kind == "block":
            nxt = fn.append_basic_block(BLOCK_NAMES[x % len(BLOCK_NAMES)])
            b.branch(nxt)
            b.position_at_end(nxt)
            with b.goto_block(entry):
                b.position_at_start(entry)
                b.alloca(i64)
            ints = [fn.args[1], fn.args[2]]
        elif kind == "switch":
            cases = [fn.append_basic_block(BLOCK_NAMES[(x + j) % len(BLOCK_NAMES)]) for j in range(y % 3)]
            after = fn.append_basic_block("after")
            switch = b.switch(a, after)
            for j, case in enumerate(cases):
                switch.add_case(ir.Constant(i64, j) if j % 2 else j, case)
                b.position_at_end(case)
                b.ret(ir.Constant(i64, k + j))
            b.position_at_end(after)
            ints = [fn.args[1], fn.args[2]]
        elif kind == "not":
            ints.append(b.not_(a))
        else:
            module.add_metadata([ir.MetaDataString(module, "branch_weights"), ir.Constant(ir.IntType(32), x)])
    b.ret(ints[-1])
    text = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(8), 3), "data")
    text.linkage, text.global_constant = "internal", True
    text.initializer = ir.Constant(ir.ArrayType(ir.IntType(8), 3), bytearray(b'a"\0'))
    return str(module)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_random_builder_programs_print_as_llvmlite_prints_them(program: list[Step]) -> None:
    ours = play(textir, program, "x86_64-pc-linux-gnu")
    assert ours == play(llvmlite_ir, program, "x86_64-pc-linux-gnu")
    llvm.parse_assembly(ours).verify()  # and LLVM reads it


def test_a_ruleset_module_is_valid_llvm_and_names_nothing_twice() -> None:
    def parsed(make: Callable[[], str]) -> None:
        llvm.parse_assembly(make()).verify()

    ruleset: RuleSet = ruleset_of((EXAMPLES / "arith.farm").read_text(), "arith.farm")
    parsed(lambda: LLVMCodegen(ruleset).single_module())
    for _, text in LLVMCodegen(ruleset).parts():
        parsed(lambda text=text: text)  # type: ignore[misc]
