"""LLVM IR written as text as it is built: the part of llvmlite.ir's API that farm's code generator uses, printing
the same module byte for byte (names, numbering, metadata), at a fraction of the cost.

Why: llvmlite.ir keeps a graph of Python objects per instruction, registers every name in a scope and formats it
all again on str(): about 10 us per instruction, which made code generation most of a cold compile (issue 14: a
1000-rule ruleset's 200,000 instructions took 5 s). Here an instruction is formatted once, when it is built, into
one line; only what the API changes afterwards is kept apart and added when the module is printed: metadata, a
switch's cases, and where an instruction sits in its block (the builder inserts at a position, as llvmlite's does).

Names follow llvmlite's rules, so that the text (and so every artifact's content key) does not depend on which
writer printed it: every instruction, argument and return value takes the next `.N` of its function, void ones
included; a named block takes its name, or `name.K` for the K-th repeat of that name; metadata nodes are numbered
by creation and deduplicated by content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

_SIMPLE_LABEL = re.compile(r"[-a-zA-Z$._][-a-zA-Z$._0-9]*$")
_PRINTABLE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                       b" !#$%&'()*+,-./:;<=>?@[]^_`{|}~")
_ESCAPED = [chr(c) if c in _PRINTABLE else f"\\{c:02x}" for c in range(256)]
_CMP = {">": "gt", "<": "lt", "==": "eq", "!=": "ne", ">=": "ge", "<=": "le"}


def _escape(data: bytes | bytearray | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return "".join([_ESCAPED[c] for c in raw])


# ---- types ----

class Type:
    __slots__ = ("text", "null")

    def __init__(self, text: str, null: str = "zeroinitializer") -> None:
        self.text, self.null = text, null  # null: how a constant None of this type prints

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Type) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def as_pointer(self) -> PointerType:
        return PointerType()  # opaque pointers throughout

    def __call__(self, value: Any) -> Constant:
        return Constant(self, value)


class IntType(Type):
    __slots__ = ("width",)

    def __init__(self, width: int) -> None:
        super().__init__(f"i{width}", "0")
        self.width = width


class PointerType(Type):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("ptr", "null")


class VoidType(Type):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("void")


class FunctionType(Type):
    __slots__ = ("return_type", "args")

    def __init__(self, return_type: Type, args: Sequence[Type]) -> None:
        super().__init__(f"{return_type} ({', '.join(str(a) for a in args)})")
        self.return_type, self.args = return_type, tuple(args)


class ArrayType(Type):
    __slots__ = ("element", "count")

    def __init__(self, element: Type, count: int) -> None:
        super().__init__(f"[{count} x {element}]")
        self.element, self.count = element, count


class LiteralStructType(Type):
    __slots__ = ("elements",)

    def __init__(self, elements: Sequence[Type]) -> None:
        super().__init__("{" + ", ".join(str(e) for e in elements) + "}")
        self.elements = tuple(elements)


LABEL, METADATA, _I32 = Type("label"), Type("metadata"), IntType(32)


# ---- values ----

class Value:
    """Anything an instruction can take: `ref` is how an operand names it, `type` its LLVM type."""

    __slots__ = ("type", "ref")

    def __init__(self, type: Type, ref: str) -> None:
        self.type, self.ref = type, ref

    def typed(self) -> str:
        return f"{self.type} {self.ref}"


class Constant(Value):
    __slots__ = ("constant",)

    def __init__(self, type: Type, constant: Any) -> None:
        if constant is None:
            ref = type.null
        elif isinstance(constant, (bytes, bytearray)):
            ref = f'c"{_escape(constant)}"'
        elif isinstance(constant, bool):
            ref = str(constant).lower()
        elif isinstance(constant, list):  # an array of these values
            ref = f"[{', '.join([value.typed() for value in constant])}]"
        else:
            ref = str(constant)
        super().__init__(type, ref)
        self.constant = constant

    def __str__(self) -> str:
        return self.typed()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constant) and self.typed() == other.typed()

    def __hash__(self) -> int:
        return hash(self.typed())


class MetaDataString(Value):
    __slots__ = ()

    def __init__(self, module: Module, string: str) -> None:
        super().__init__(METADATA, f'!"{_escape(string)}"')


class MDValue(Value):
    """An unnamed metadata node: `!N = !{ operands }`."""

    __slots__ = ("line",)

    def __init__(self, number: int, operands: str) -> None:
        super().__init__(METADATA, f"!{number}")
        self.line = f"!{number} = !{{ {operands} }}"


class _Scope:
    """llvmlite's NameScope: a name is taken once; a repeat becomes `name.K`. Unnamed values count `.N` apart:
    no name the code generator gives starts with a dot followed by digits only, so the two never meet."""

    __slots__ = ("used", "repeats", "unnamed")

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.repeats: dict[str, int] = {}
        self.unnamed = 0

    def name(self, wanted: str = "") -> str:
        if not wanted:
            self.unnamed += 1
            return f".{self.unnamed}"
        name = wanted
        while name in self.used:
            self.repeats[wanted] = self.repeats.get(wanted, 0) + 1
            name = f"{wanted}.{self.repeats[wanted]}"
        self.used.add(name)
        return name


def _quoted(prefix: str, name: str) -> str:
    if "\\" in name or '"' in name:
        name = name.replace("\\", "\\5c").replace('"', "\\22")
    return f'{prefix}"{name}"'


class Argument(Value):
    __slots__ = ("name",)

    def __init__(self, type: Type, name: str) -> None:
        super().__init__(type, _quoted("%", name))
        self.name = name

    def __str__(self) -> str:
        return self.typed()


class Instruction(Value):
    """One line: `head` is its text without the metadata, which llvmlite prints last (then strips the line).
    `name` is the `.N` the builder gave it: nothing to quote."""

    __slots__ = ("head", "metadata", "name", "_meta")

    def __init__(self, type: Type, name: str, head: str) -> None:
        ref = f'%"{name}"'
        self.type, self.ref, self.name = type, ref, name
        self.head = head if type.text == "void" else f"{ref} = {head}"
        self.metadata: dict[str, MDValue] | None = None
        self._meta = ""  # the metadata as printed, kept up to date by set_metadata

    def set_metadata(self, kind: str, node: MDValue) -> None:
        if self.metadata is None:
            self.metadata = {}
        replaced = kind in self.metadata
        self.metadata[kind] = node
        if replaced:  # a kind set again keeps its place, as in a dict
            self._meta = "".join([f", !{k} {n.ref}" for k, n in self.metadata.items()])
        else:
            self._meta += f", !{kind} {node.ref}"

    def line(self) -> str:
        return (self.head + self._meta).rstrip()


class AllocaInstr(Instruction):
    __slots__ = ("allocated_type",)

    def __init__(self, name: str, head: str, allocated_type: Type) -> None:
        super().__init__(PointerType(), name, head)
        self.allocated_type = allocated_type


class Branch(Instruction):
    __slots__ = ("module",)

    def __init__(self, name: str, head: str, module: Module) -> None:
        super().__init__(VOID, name, head)
        self.module = module

    def set_weights(self, weights: list[int]) -> None:
        operands = [MetaDataString(self.module, "branch_weights"), *(Constant(_I32, w) for w in weights)]
        self.set_metadata("prof", self.module.add_metadata(operands))


class SwitchInstr(Instruction):
    __slots__ = ("cases", "value_type")

    def __init__(self, name: str, head: str, value_type: Type) -> None:
        super().__init__(VOID, name, head)
        self.cases: list[str] = []
        self.value_type = value_type

    def add_case(self, value: Value | int, block: Block) -> None:
        case = value if isinstance(value, Value) else Constant(self.value_type, value)
        self.cases.append(f"{case.typed()}, label {block.ref}")

    def line(self) -> str:
        return f"{self.head}[{' '.join(self.cases)}]  {self._meta}".rstrip()


class Block(Value):
    __slots__ = ("name", "function", "instructions", "terminator")

    def __init__(self, function: Function, name: str) -> None:
        self.name = function.scope.name(name)
        super().__init__(LABEL, _quoted("%", self.name))
        self.function = function
        self.instructions: list[Instruction] = []
        self.terminator: Instruction | None = None

    @property
    def is_terminated(self) -> bool:
        return self.terminator is not None

    @property
    def module(self) -> Module:
        return self.function.module

    def lines(self, out: list[str]) -> None:
        name = self.name if _SIMPLE_LABEL.match(self.name) else _quoted("", self.name)
        out.append(f"{name}:\n")
        out.extend([f"  {(i.head + i._meta).rstrip() if type(i) is Instruction else i.line()}\n"
                    for i in self.instructions])


class _Attributes(set[str]):
    def add(self, name: str) -> None:
        super().add(name)

    def text(self) -> str:
        return " " + " ".join(sorted(self)) if self else ""


class GlobalValue(Value):
    __slots__ = ("module", "name", "linkage")

    def __init__(self, module: Module, name: str) -> None:
        self.name = module.scope.name(name)
        super().__init__(PointerType(), _quoted("@", self.name))
        self.module = module
        self.linkage = ""
        module.globals[self.name] = self


class Function(GlobalValue):
    __slots__ = ("ftype", "scope", "blocks", "attributes", "args", "calling_convention")

    def __init__(self, module: Module, ftype: FunctionType, name: str) -> None:
        super().__init__(module, name)
        self.ftype = ftype
        self.scope = _Scope()
        self.blocks: list[Block] = []
        self.attributes = _Attributes()
        self.args = tuple(Argument(t, self.scope.name()) for t in ftype.args)
        self.scope.name()  # llvmlite's return value takes a name too
        self.calling_convention = ""

    @property
    def function_type(self) -> FunctionType:
        return self.ftype

    def append_basic_block(self, name: str = "") -> Block:
        block = Block(self, name)
        self.blocks.append(block)
        return block

    def __str__(self) -> str:
        state = "define" if self.blocks else "declare"
        prefix = " ".join(x for x in (state, self.linkage, self.calling_convention, str(self.ftype.return_type)) if x)
        args = ", ".join(str(a) for a in self.args)
        out = [f"{prefix} {self.ref}({args}){self.attributes.text()}\n"]
        if self.blocks:
            out.append("{\n")
            for block in self.blocks:
                block.lines(out)
            out.append("}\n")
        return "".join(out)


class GlobalVariable(GlobalValue):
    __slots__ = ("value_type", "global_constant", "initializer")

    def __init__(self, module: Module, type: Type, name: str) -> None:
        super().__init__(module, name)
        self.value_type = type
        self.global_constant = False
        self.initializer: Constant | None = None

    def __str__(self) -> str:
        linkage = self.linkage or ("external" if self.initializer is None else "")
        kind = "constant" if self.global_constant else "global"
        init = f" {self.initializer.ref}" if self.initializer is not None else ""
        return f"{self.ref} = {linkage + ' ' if linkage else ''}{kind} {self.value_type}{init}"


class Module:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.triple = "unknown-unknown-unknown"
        self.data_layout = ""
        self.scope = _Scope()
        self.globals: dict[str, GlobalValue] = {}
        self.metadata: list[MDValue] = []
        self._metadata_by_text: dict[str, MDValue] = {}
        self.memo: dict[str, Any] = {}  # what a code generator makes once per module (farm's alias tags)

    def add_metadata(self, operands: Sequence[Value]) -> MDValue:
        """The node of these operands: a new one, or the one made before with the same (as llvmlite dedups)."""
        text = ", ".join([op.ref if op.type is METADATA else op.typed() for op in operands])
        node = self._metadata_by_text.get(text)
        if node is None:
            node = MDValue(len(self.metadata), text)
            self.metadata.append(node)
            self._metadata_by_text[text] = node
        return node

    def __str__(self) -> str:
        lines = [f'; ModuleID = "{self.name}"', f'target triple = "{self.triple}"',
                 f'target datalayout = "{self.data_layout}"', ""]
        lines += [str(g) for g in self.globals.values()]
        lines += [node.line for node in self.metadata]
        return "\n".join(lines)


# ---- the builder ----

def _label_suffix(label: str, suffix: str) -> str:
    return label[:25] + ".." + suffix if len(label) > 50 else label + suffix


class IRBuilder:
    """Inserts at a position of a block, as llvmlite's IRBuilder does (before the anchor, which then moves on)."""

    def __init__(self, block: Block) -> None:
        self.block = block
        self._anchor = len(block.instructions)
        self.calls = 0  # calls built so far: what a caller caching loads across instructions checks

    @property
    def at_end(self) -> bool:
        """Whether the next instruction goes at the end of the current block."""
        return self._anchor == len(self.block.instructions)

    @property
    def function(self) -> Function:
        return self.block.function

    @property
    def module(self) -> Module:
        return self.block.function.module

    # -- position --
    def position_at_start(self, block: Block) -> None:
        self.block, self._anchor = block, 0

    def position_at_end(self, block: Block) -> None:
        self.block, self._anchor = block, len(block.instructions)

    @contextmanager
    def goto_block(self, block: Block) -> Iterator[None]:
        """At the end of `block`, before its terminator if it has one; back at the end of this block after."""
        old = self.block
        if block.terminator is not None:
            self.block, self._anchor = block, block.instructions.index(block.terminator)
        else:
            self.position_at_end(block)
        try:
            yield
        finally:
            self.position_at_end(old)

    @contextmanager
    def if_then(self, pred: Value, likely: bool | None = None) -> Iterator[Block]:
        here = self.block
        then = self.function.append_basic_block(_label_suffix(here.name, ".if"))
        after = self.function.append_basic_block(_label_suffix(here.name, ".endif"))
        br = self.cbranch(pred, then, after)
        if likely is not None:
            br.set_weights([99, 1] if likely else [1, 99])
        self.position_at_end(then)
        yield after
        if self.block.terminator is None:
            self.branch(after)
        self.position_at_end(after)

    @contextmanager
    def if_else(self, pred: Value, likely: bool | None = None) -> Iterator[tuple[Any, Any]]:
        here = self.block
        then = self.function.append_basic_block(_label_suffix(here.name, ".if"))
        otherwise = self.function.append_basic_block(_label_suffix(here.name, ".else"))
        after = self.function.append_basic_block(_label_suffix(here.name, ".endif"))
        br = self.cbranch(pred, then, otherwise)
        if likely is not None:
            br.set_weights([99, 1] if likely else [1, 99])
        yield self._arm(then, after), self._arm(otherwise, after)
        self.position_at_end(after)

    @contextmanager
    def _arm(self, block: Block, after: Block) -> Iterator[Block]:
        self.position_at_end(block)
        yield after
        if self.block.terminator is None:
            self.branch(after)

    # -- insertion --
    def _name(self) -> str:
        scope = self.block.function.scope
        scope.unnamed += 1
        return f".{scope.unnamed}"

    def _insert(self, instr: Instruction) -> Instruction:
        block = self.block
        if self._anchor == len(block.instructions):
            block.instructions.append(instr)
        else:
            block.instructions.insert(self._anchor, instr)
        self._anchor += 1
        return instr

    def _emit(self, type: Type, head: str) -> Instruction:
        return self._insert(Instruction(type, self._name(), head))

    def _terminate(self, instr: Instruction) -> Instruction:
        assert self.block.terminator is None, "block already terminated"
        self._insert(instr)
        self.block.terminator = instr
        return instr

    # -- arithmetic and logic --
    def _binop(self, op: str, lhs: Value, rhs: Value) -> Instruction:
        return self._emit(lhs.type, f"{op} {lhs.type} {lhs.ref}, {rhs.ref}")

    def add(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("add", lhs, rhs)

    def sub(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("sub", lhs, rhs)

    def mul(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("mul", lhs, rhs)

    def sdiv(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("sdiv", lhs, rhs)

    def srem(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("srem", lhs, rhs)

    def and_(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("and", lhs, rhs)

    def or_(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("or", lhs, rhs)

    def xor(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("xor", lhs, rhs)

    def shl(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("shl", lhs, rhs)

    def lshr(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("lshr", lhs, rhs)

    def ashr(self, lhs: Value, rhs: Value) -> Instruction:
        return self._binop("ashr", lhs, rhs)

    def not_(self, value: Value) -> Instruction:
        return self.xor(value, Constant(value.type, -1))

    def _icmp(self, prefix: str, cmpop: str, lhs: Value, rhs: Value) -> Instruction:
        op = _CMP[cmpop] if cmpop in ("==", "!=") else prefix + _CMP[cmpop]
        return self._emit(I1, f"icmp {op} {lhs.type} {lhs.ref}, {rhs.ref} ")

    def icmp_signed(self, cmpop: str, lhs: Value, rhs: Value) -> Instruction:
        return self._icmp("s", cmpop, lhs, rhs)

    def icmp_unsigned(self, cmpop: str, lhs: Value, rhs: Value) -> Instruction:
        return self._icmp("u", cmpop, lhs, rhs)

    def select(self, cond: Value, lhs: Value, rhs: Value) -> Instruction:
        return self._emit(lhs.type, f"select  {cond.typed()}, {lhs.typed()}, {rhs.typed()} ")

    # -- casts (none when the value has the type already, as in llvmlite) --
    def _cast(self, op: str, value: Value, type: Type) -> Value:
        if value.type == type:
            return value
        return self._emit(type, f"{op} {value.type} {value.ref} to {type} ")

    def trunc(self, value: Value, type: Type) -> Value:
        return self._cast("trunc", value, type)

    def sext(self, value: Value, type: Type) -> Value:
        return self._cast("sext", value, type)

    def zext(self, value: Value, type: Type) -> Value:
        return self._cast("zext", value, type)

    def ptrtoint(self, value: Value, type: Type) -> Value:
        return self._cast("ptrtoint", value, type)

    def inttoptr(self, value: Value, type: Type) -> Value:
        return self._cast("inttoptr", value, type)

    # -- memory --
    def alloca(self, type: Type, size: Value | int | None = None) -> AllocaInstr:
        count = Constant(_I32, size) if isinstance(size, int) else size
        head = f"alloca {type}" + (f", {count.typed()}" if count is not None else "")
        instr = AllocaInstr(self._name(), head, type)
        self._insert(instr)
        return instr

    def load(self, ptr: Value, typ: Type | None = None) -> Instruction:
        if typ is None:
            assert isinstance(ptr, AllocaInstr), "a load from an opaque pointer needs its type"
            typ = ptr.allocated_type
        return self._emit(typ, f"load {typ}, {ptr.type} {ptr.ref}")

    def store(self, value: Value, ptr: Value) -> Instruction:
        return self._emit(VOID, f"store {value.type} {value.ref}, {ptr.type} {ptr.ref}")

    def load_atomic(self, ptr: Value, ordering: str, align: int, typ: Type | None = None) -> Instruction:
        assert typ is not None, "a load from an opaque pointer needs its type"
        return self._emit(typ, f"load atomic {typ}, {ptr.type} {ptr.ref} {ordering}, align {align}")

    def store_atomic(self, value: Value, ptr: Value, ordering: str, align: int) -> Instruction:
        return self._emit(VOID, f"store atomic {value.type} {value.ref}, {ptr.type} {ptr.ref} {ordering}, "
                                f"align {align}")

    def gep(self, ptr: Value, indices: Sequence[Value], inbounds: bool = False,
            source_etype: Type | None = None) -> Instruction:
        assert source_etype is not None, "opaque pointers: a GEP needs its source element type"
        op = "getelementptr inbounds" if inbounds else "getelementptr"
        return self._emit(ptr.type, f"{op} {source_etype}, {ptr.type} {ptr.ref}, "
                                    f"{', '.join([i.typed() for i in indices])} ")

    # -- calls and terminators --
    def call(self, fn: Function, args: Sequence[Value], through: Value | None = None) -> Instruction:
        """fn(args); `through`: the address to call instead of fn's own (a pointer to fn, loaded)."""
        self.calls += 1
        ret = fn.ftype.return_type
        convention = f"{fn.calling_convention} " if fn.calling_convention else ""
        callee = fn.ref if through is None else through.ref
        return self._emit(ret, f"call {convention}{ret} {callee}({', '.join([a.typed() for a in args])})")

    def ret(self, value: Value) -> Instruction:
        return self._terminate(Instruction(VOID, self._name(), f"ret {value.type} {value.ref}"))

    def ret_void(self) -> Instruction:
        return self._terminate(Instruction(VOID, self._name(), "ret void"))

    def branch(self, target: Block) -> Instruction:
        return self._terminate(Instruction(VOID, self._name(), f"br label {target.ref}"))

    def cbranch(self, cond: Value, truebr: Block, falsebr: Block) -> Branch:
        br = Branch(self._name(), f"br {cond.type} {cond.ref}, label {truebr.ref}, label {falsebr.ref}", self.module)
        self._terminate(br)
        return br

    def switch(self, value: Value, default: Block) -> SwitchInstr:
        instr = SwitchInstr(self._name(), f"switch {value.type} {value.ref}, label {default.ref} ", value.type)
        self._terminate(instr)
        return instr


I1, I64, VOID = IntType(1), IntType(64), VoidType()

__all__ = ["AllocaInstr", "Argument", "ArrayType", "Block", "Constant", "Function", "FunctionType",
           "GlobalVariable", "IRBuilder", "IntType", "LiteralStructType", "MDValue", "MetaDataString", "Module",
           "PointerType", "Type", "Value", "VoidType"]
