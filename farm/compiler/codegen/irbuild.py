"""Helpers that let IR functions read like the runtime's operations: arena fields, heap words, loops.

Loads and stores carry type-based alias tags: the arena struct, the heap, the shadow stack and the other
arrays never alias, so LLVM keeps a heap word in a register across a store to the shadow stack (until a
call, which may collect and move everything).

A module made `quick(module)` is shaped for the in-memory compile at -O0 (tier 0), where LLVM's fast instruction
selector (FastISel) does the work and every instruction it cannot select is handed to the slow one (SelectionDAG),
one at a time: it has no alias tags or branch weights (nothing reads them without optimisation; arith's parse 10%
faster), calls through a table of the module's callees (FastISel selects no direct call in the large code model
the JIT needs: farm/runtime/inmemory.py) and tests a few cases one after the other rather than switch (FastISel
selects no switch). arith's pieces, emitted: 14.4 ms instead of 22.2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import ARENA_FIELDS, ARENA_INDEX, CONTENT_AT, EXPORTS

I1, I32, I64, PTR, VOID = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.PointerType(), ir.VoidType()
FIELD_TYPES = [PTR if kind == "ptr" else I64 for _, kind in ARENA_FIELDS]  # each arena field's type
KINDS = {"i64": I64, "ptr": PTR, "arena": PTR, "i64*": PTR, "i32*": PTR, "str": PTR, "void": VOID}
TBAA_KINDS = ("arena", "heap", "roots", "cell", "column")
QUICK_SWITCH_CASES = 16  # in a quick module, a switch of more cases than this stays a switch (a jump table)


@lru_cache(maxsize=1 << 14)
def c64(value: int) -> ir.Constant:
    """The i64 constant (wrapped to 64 bits); shared: a constant is never changed once made."""
    return ir.Constant(I64, ((value + 2**63) % 2**64) - 2**63)


TRUE, FALSE = ir.Constant(I1, 1), ir.Constant(I1, 0)
NULL = ir.Constant(PTR, None)


def export_type(name: str) -> ir.FunctionType:
    ret, args = EXPORTS[name]
    return ir.FunctionType(KINDS[ret], [KINDS[a] for a in args])


def function(module: ir.Module, name: str, fnty: ir.FunctionType, internal: bool) -> ir.Function:
    """The function `name` of the module (declared earlier by a caller, or new)."""
    existing = module.globals.get(name)
    fn = existing if isinstance(existing, ir.Function) else ir.Function(module, fnty, name)
    fn.attributes.add("nounwind")
    if internal:
        fn.linkage = "internal"
    return fn


def quick(module: ir.Module) -> None:
    """Shape the code built into this module for the -O0 in-memory compile (the module docstring)."""
    module.memo["quick"] = _CallTable(module)


def is_quick(module: ir.Module) -> bool:
    return "quick" in module.memo


class _CallTable:
    """A quick module's callees, by address: `@callees`, an internal constant array of them, which each function
    loads its callees' addresses from (the array's address computed once, in the entry block)."""

    def __init__(self, module: ir.Module) -> None:
        self.module = module
        self.slots: dict[str, int] = {}
        self.table = ir.GlobalVariable(module, ir.ArrayType(PTR, 0), "callees")
        self.table.linkage, self.table.global_constant = "internal", True
        self.table.initializer = ir.Constant(self.table.value_type, [])

    def slot(self, fn: ir.Function) -> int:
        k = self.slots.get(fn.name)
        if k is None:
            k = self.slots[fn.name] = len(self.slots)
            callees = [self.module.globals[name] for name in self.slots]
            self.table.value_type = ir.ArrayType(PTR, len(callees))
            self.table.initializer = ir.Constant(self.table.value_type, callees)
        return k


def declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    """`name` in this module: its definition if emitted already, else a declaration."""
    existing = module.globals.get(name)
    if isinstance(existing, ir.Function):
        return existing
    fn = ir.Function(module, fnty, name)
    fn.attributes.add("nounwind")
    return fn


class FunctionBuilder:
    """An IR function under construction whose first argument is the arena."""

    def __init__(self, module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type],
                 internal: bool = True) -> None:
        self.fn = function(module, name, ir.FunctionType(ret, args), internal)
        self.entry = self.fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.arena: ir.Value = self.fn.args[0] if args and args[0] == PTR else NULL
        self._fields: dict[str, ir.Value] = {}  # arena field addresses, at the top of the entry block
        self._loaded: dict[str, tuple[ir.Block, int, ir.Value]] = {}  # see get()
        self._quick: _CallTable | None = module.memo.get("quick")
        self._callees: ir.Value | None = None  # the call table's address, in a quick module

    @classmethod
    def body_of(cls, fn: ir.Function) -> FunctionBuilder:
        """Give a body to a function declared earlier (callers may be emitted before it)."""
        self = cls.__new__(cls)
        self.fn, self.entry = fn, fn.append_basic_block("entry")
        self.b, self.arena = ir.IRBuilder(self.entry), fn.args[0]
        self._fields, self._loaded = {}, {}
        self._quick, self._callees = fn.module.memo.get("quick"), None
        return self

    @property
    def args(self) -> tuple[ir.Argument, ...]:
        return tuple(self.fn.args)

    @property
    def module(self) -> ir.Module:
        return self.fn.module

    def block(self, name: str = "") -> ir.Block:
        return self.fn.append_basic_block(name)

    def var(self, init: ir.Value, ty: ir.Type = I64) -> ir.Value:
        """A mutable local; opt's mem2reg turns it into SSA form."""
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            slot = self.b.alloca(ty)
        self.b.store(init, slot)
        return slot

    def read(self, slot: ir.Value, ty: ir.Type = I64) -> ir.Value:
        return self.b.load(slot, typ=ty)

    def buffer(self, count: int) -> ir.Value:
        """`count` i64 cells in this function's frame."""
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            return self.b.alloca(I64, size=max(1, count))

    @property
    def quick(self) -> bool:
        """Whether the module is shaped for the -O0 in-memory compile (quick())."""
        return self._quick is not None

    def _tag(self, instr: ir.Instruction, kind: str) -> None:
        """The access's alias class (TBAA_KINDS), for the optimiser: none in a quick module."""
        if self._quick is None:
            instr.set_metadata("tbaa", self._tbaa(kind))

    def _tbaa(self, kind: str) -> ir.MDValue:
        module = self.module
        tags: dict[str, ir.MDValue] | None = module.memo.get("tbaa")
        if tags is None:
            root = module.add_metadata([ir.MetaDataString(module, "farm tbaa")])
            tags = {}
            for name in TBAA_KINDS:
                node = module.add_metadata([ir.MetaDataString(module, f"farm {name}"), root, c64(0)])
                tags[name] = module.add_metadata([node, node, c64(0)])
            module.memo["tbaa"] = tags
        return tags[kind]

    # arena fields
    def _field(self, name: str) -> ir.Value:
        """The field's word (every field is 8 bytes, abi.py), not a struct GEP: the same address, without the
        whole struct type spelled out on each line. Computed once per function, at the top of its entry block,
        when the arena is the function's argument: a fifth of a rules module's instructions were these."""
        if not isinstance(self.arena, ir.Argument):  # made in the body (farm_arena_new): where it is used
            return self.b.gep(self.arena, [c64(ARENA_INDEX[name])], inbounds=True, source_etype=I64)
        if name not in self._fields:
            with self.b.goto_block(self.entry):
                self.b.position_at_start(self.entry)
                self._fields[name] = self.b.gep(self.arena, [c64(ARENA_INDEX[name])], inbounds=True,
                                                source_etype=I64)
        return self._fields[name]

    def get(self, name: str) -> ir.Value:
        """The field's value. Loaded once per stretch of a block: a field changes only through put() or a call
        (the callee may grow or move what it points at), so the last load in this block, with no call or put of
        it since, is still its value. A fifth of a rules module's instructions were reloads of `roots` and `heap`,
        which tier 0 (no optimisation) compiled and ran as they came."""
        b = self.b
        cached = self._loaded.get(name)
        if cached is not None and cached[0] is b.block and cached[1] == b.calls and b.at_end:
            return cached[2]
        value = b.load(self._field(name), typ=FIELD_TYPES[ARENA_INDEX[name]])
        self._tag(value, "arena")
        if b.at_end:
            self._loaded[name] = (b.block, b.calls, value)
        return value

    def snapshot(self) -> dict[str, ir.Value]:
        """The fields whose value get() has at this point: to carry() into a block entered only from here."""
        b = self.b
        if not b.at_end:
            return {}
        return {name: value for name, (block, calls, value) in self._loaded.items()
                if block is b.block and calls == b.calls}

    def carry(self, fields: dict[str, ir.Value]) -> None:
        """At the top of a block whose every way in comes from where `fields` was taken (a switch's case, a test's
        branch), with no call on the way: those values hold here too, and get() does not load them again."""
        b = self.b
        assert b.at_end and not b.block.instructions, "carry() goes at the top of a fresh block"
        for name, value in fields.items():
            self._loaded[name] = (b.block, b.calls, value)

    def put(self, name: str, value: ir.Value) -> None:
        self._tag(self.b.store(value, self._field(name)), "arena")
        if self.b.at_end:
            self._loaded[name] = (self.b.block, self.b.calls, value)
        else:
            self._loaded.pop(name, None)

    def get_atomic(self, name: str) -> ir.Value:
        """The field's value, loaded again each time, atomically: another thread writes it (put_atomic)."""
        return self.b.load_atomic(self._field(name), "monotonic", 8, typ=FIELD_TYPES[ARENA_INDEX[name]])

    def put_atomic(self, name: str, value: ir.Value) -> None:
        self.b.store_atomic(value, self._field(name), "monotonic", 8)
        self._loaded.pop(name, None)

    def bump(self, name: str, by: int) -> ir.Value:
        """field += by; the new value."""
        value = self.b.add(self.get(name), c64(by))
        self.put(name, value)
        return value

    # cells of i64 arrays
    def elem(self, base: ir.Value, index: ir.Value) -> ir.Value:
        return self.b.gep(base, [index], source_etype=I64)

    def load_at(self, base: ir.Value, index: ir.Value, kind: str = "cell") -> ir.Value:
        """kind: the alias class of the array (TBAA_KINDS), or "any" for a pointer that may be any of them."""
        value = self.b.load(self.elem(base, index), typ=I64)
        if kind != "any":
            self._tag(value, kind)
        return value

    def store_at(self, base: ir.Value, index: ir.Value, value: ir.Value, kind: str = "cell") -> None:
        store = self.b.store(value, self.elem(base, index))
        if kind != "any":
            self._tag(store, kind)

    # cells of the 32-bit term-graph columns (operators, arities, child ids), widened to i64 on the way in
    def load_i32(self, base: ir.Value, index: ir.Value) -> ir.Value:
        value = self.b.load(self.b.gep(base, [index], source_etype=I32), typ=I32)
        self._tag(value, "column")
        return self.b.sext(value, I64)

    def store_i32(self, base: ir.Value, index: ir.Value, value: ir.Value) -> None:
        """The caller knows the value fits (an operator id, an arity, a node number under MAX_NODES)."""
        store = self.b.store(self.b.trunc(value, I32), self.b.gep(base, [index], source_etype=I32))
        self._tag(store, "column")

    def plus(self, value: ir.Value, k: int | ir.Value) -> ir.Value:
        """value + k, with no instruction for + 0 (tier 0 compiles every instruction as it comes)."""
        if isinstance(k, int):
            return value if k == 0 else self.b.add(value, c64(k))
        return self.b.add(value, k)

    # heap words (the heap pointer is reloaded after anything that may collect: get())
    def word(self, node: ir.Value, k: int | ir.Value) -> ir.Value:
        return self.load_at(self.get("heap"), self.plus(node, k), "heap")

    def set_word(self, node: ir.Value, k: int | ir.Value, value: ir.Value) -> None:
        self.store_at(self.get("heap"), self.plus(node, k), value, "heap")

    def content(self, node: ir.Value, k: int | ir.Value) -> ir.Value:
        """Content word k of a node: its child k, or (k = 0) a literal's value."""
        return self.word(node, CONTENT_AT + k if isinstance(k, int) else self.b.add(k, c64(CONTENT_AT)))

    def op_of(self, header: ir.Value) -> ir.Value:
        """The signed operator id in a header's low 32 bits."""
        return self.b.sext(self.b.trunc(header, I32), I64)

    def arity_of(self, header: ir.Value) -> ir.Value:
        return self.b.lshr(header, c64(32))

    # the shadow stack
    def root(self, index: ir.Value) -> ir.Value:
        return self.load_at(self.get("roots"), index, "roots")

    def set_root(self, index: ir.Value, value: ir.Value) -> None:
        self.store_at(self.get("roots"), index, value, "roots")

    def root_ptr(self, index: ir.Value) -> ir.Value:
        return self.elem(self.get("roots"), index)

    # calls and control flow
    def call(self, fn: ir.Function, args: list[ir.Value]) -> ir.Value:
        """fn(args): a direct call, or in a quick module a call through its call table."""
        if self._quick is None or fn.name.startswith("llvm."):
            return self.b.call(fn, args)
        if self._callees is None:
            with self.b.goto_block(self.entry):
                self.b.position_at_start(self.entry)
                self._callees = self.b.gep(self._quick.table, [c64(0)], source_etype=PTR)
        address = self.b.load(self.b.gep(self._callees, [c64(self._quick.slot(fn))], source_etype=PTR), typ=PTR)
        return self.b.call(fn, args, through=address)

    def dispatch(self, value: ir.Value, default: ir.Block, cases: list[tuple[int, ir.Block]]) -> None:
        """Branch on an i64 to its case's block, else to `default`: a switch, or in a quick module a test per
        case while there are few (QUICK_SWITCH_CASES)."""
        b = self.b
        if self._quick is None or len(cases) > QUICK_SWITCH_CASES:
            switch = b.switch(value, default)
            for case, block in cases:
                switch.add_case(c64(case), block)
            return
        for k, (case, block) in enumerate(cases):
            later = default if k == len(cases) - 1 else self.block("case")
            b.cbranch(b.icmp_signed("==", value, c64(case)), block, later)
            b.position_at_end(later)
        if not cases:
            b.branch(default)

    @contextmanager
    def loop(self, start: ir.Value, stop: ir.Value, step: int = 1) -> Iterator[ir.Value]:
        """for (i = start; i < stop; i += step) — `stop` is evaluated once."""
        i = self.var(start)
        head, body, done = self.block("loop"), self.block("body"), self.block("done")
        self.b.branch(head)
        self.b.position_at_end(head)
        cur = self.read(i)
        self.b.cbranch(self.b.icmp_signed("<", cur, stop), body, done)
        self.b.position_at_end(body)
        yield cur
        if not self.b.block.is_terminated:
            self.b.store(self.b.add(cur, c64(step)), i)
            self.b.branch(head)
        self.b.position_at_end(done)

    def unlikely(self) -> bool | None:
        """if_then's `likely` for a rare branch: a weight for the optimiser, none in a quick module."""
        return None if self._quick is not None else False

    def return_if(self, cond: ir.Value, value: ir.Value) -> None:
        with self.b.if_then(cond, likely=self.unlikely()):
            self.b.ret(value)

    def return_if_error(self, value: ir.Value) -> None:
        """Errors are negative and end the whole root: nothing to undo on the way out."""
        self.return_if(self.b.icmp_signed("<", value, c64(0)), value)

    def return_if_false(self, ok: ir.Value, code: int) -> None:
        self.return_if(self.b.not_(ok), c64(code))
