"""Whole-ruleset LLVM IR: a hash-consed term arena, decision-tree matchers and the innermost normaliser.

The module is self-contained apart from malloc/calloc/realloc/free. Its exported C ABI is described in
docs/abi.md; loader.py mirrors the arena struct. Rule and operator names never reach an IR identifier:
functions are named by operator index, and the module name is fixed.

A ruleset is emitted as separate modules, so that objects can be cached and relinked:
  runtime   the arena and the normaliser; the same for every ruleset (per target, CPU and -O level)
  manifest  farm_match (dispatch on the root operator), rule and operator counts, arities, fingerprint
  chunk<i>  the decision trees of a group of root operators (farm_match_op<k>, one per operator)
A small ruleset is runtime + one module. Changing one rule of a large ruleset recompiles its chunk's
object and the manifest, then relinks. `single_module()`
puts all of them in one module (for `farm codegen`, llvmlite checks and seed-API users).

Semantics mirror farm/interp.py step for step (the same stack discipline, fuel and cycle checks), so
that native code and the interpreter agree on normal forms, firing counts and errors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

from llvmlite import ir

from farm.matchtree import NODE_BUDGET, Chain, Fail, Leaf, Occurrence, Switch, Tree, build_tree
from farm.rules import App, BinOp, Compare, Computed, Constraint, IsConst, Lit, LitExpr, Neg, PatternExpr, Var
from farm.semantics import MAX_CONDITION_DEPTH
from farm.trampoline import Step, run
from farm.transduce import RuleSet

ABI_VERSION = 3
I1, I64, PTR, VOID = ir.IntType(1), ir.IntType(64), ir.PointerType(), ir.VoidType()

# Node record: NODE_STRIDE i64 fields.
NODE_STRIDE = 6
F_OP, F_ARITY, F_PAYLOAD, F_NF, F_VIA, F_MARK = range(NODE_STRIDE)
# Arena struct fields, in order (loader.ArenaStruct mirrors this).
ARENA_FIELDS = [("nodes", PTR), ("n_nodes", I64), ("cap_nodes", I64), ("kids", PTR), ("n_kids", I64),
                ("cap_kids", I64), ("table", PTR), ("table_mask", I64), ("stack", PTR), ("sp", I64),
                ("cap_stack", I64), ("steps", I64), ("fuel", I64), ("counters", PTR), ("last_rule", I64),
                ("depth", I64),  # farm_normalize calls in progress (conditions nest them)
                ("limit", I64), ("held", I64)]  # the memory cap in bytes, and the bytes the arena holds
A = {name: i for i, (name, _) in enumerate(ARENA_FIELDS)}
ARENA = ir.LiteralStructType([t for _, t in ARENA_FIELDS])
LIT_OP = -1
NO_MATCH, ERR_FUEL, ERR_CYCLE, ERR_OOM, ERR_INPUT, ERR_DEPTH = -1, -2, -3, -4, -5, -6
# Hash-table slots hold (hash >> TAG_SHIFT) << TAG_SHIFT | (node id + 1): ids below 2^36 (68 G nodes).
TAG_SHIFT = 36
SLOT_ID_MASK = (1 << TAG_SHIFT) - 1
INITIAL = {"nodes": 1024, "kids": 2048, "table": 2048, "stack": 256}
# Bytes per element of the arena's growable arrays; `held` counts their capacity in bytes.
ELEM_BYTES = {"nodes": 8 * NODE_STRIDE, "kids": 8, "table": 8, "stack": 16}
NO_LIMIT = 2**63 - 1  # the arena's `limit` until a loader sets the memory cap


def opaque(slot: ir.AllocaInstr) -> ir.AllocaInstr:
    """llvmlite types an alloca as a typed pointer (printed `i64*`); make it `ptr` like every other
    pointer, so the module is opaque-pointer IR throughout."""
    slot.type = PTR
    return slot


def c64(value: int) -> ir.Constant:
    return ir.Constant(I64, ((value + 2**63) % 2**64) - 2**63)


class _Fn:
    """An IR function under construction, with helpers that read like the arena operations."""

    def __init__(self, module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type],
                 internal: bool = True) -> None:
        existing = module.globals.get(name)
        self.fn = existing if isinstance(existing, ir.Function) else \
            ir.Function(module, ir.FunctionType(ret, args), name)
        self.fn.attributes.add("nounwind")
        if internal:
            self.fn.linkage = "internal"
        self.entry = self.fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.arena = self.fn.args[0] if args and args[0] == PTR else None

    @classmethod
    def define(cls, fn: ir.Function) -> _Fn:
        """Give a body to a function declared earlier (farm_match is called before it is built)."""
        self = cls.__new__(cls)
        self.fn = fn
        self.entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.arena = fn.args[0]
        return self

    @property
    def args(self) -> tuple[ir.Argument, ...]:
        return tuple(self.fn.args)

    def block(self, name: str = "") -> ir.Block:
        return self.fn.append_basic_block(name)

    def var(self, init: ir.Value, ty: ir.Type = I64) -> ir.AllocaInstr:
        """A mutable local; opt's mem2reg turns it into SSA form."""
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            slot = opaque(self.b.alloca(ty))
        self.b.store(init, slot)
        return slot

    def _tbaa(self, kind: str) -> ir.MDValue:
        """Type-based alias tags: arena struct fields and array cells never alias, so a pointer loaded from
        the arena stays valid across stores into nodes and kids (until a call may realloc)."""
        module = self.fn.module
        tags = getattr(module, "_farm_tbaa", None)
        if tags is None:
            root = module.add_metadata([ir.MetaDataString(module, "farm tbaa")])
            tags = {}
            for name in ("arena", "cell"):
                node = module.add_metadata([ir.MetaDataString(module, f"farm {name}"), root, c64(0)])
                tags[name] = module.add_metadata([node, node, c64(0)])
            module._farm_tbaa = tags
        return tags[kind]

    # arena fields
    def field(self, name: str) -> ir.Value:
        return self.b.gep(self.arena, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), A[name])],
                          source_etype=ARENA)

    def get(self, name: str) -> ir.Value:
        value = self.b.load(self.field(name), typ=ARENA_FIELDS[A[name]][1])
        value.set_metadata("tbaa", self._tbaa("arena"))
        return value

    def put(self, name: str, value: ir.Value) -> None:
        self.b.store(value, self.field(name)).set_metadata("tbaa", self._tbaa("arena"))

    def elem(self, base: ir.Value, index: ir.Value) -> ir.Value:
        return self.b.gep(base, [index], source_etype=I64)

    def load_at(self, base: ir.Value, index: ir.Value) -> ir.Value:
        value = self.b.load(self.elem(base, index), typ=I64)
        value.set_metadata("tbaa", self._tbaa("cell"))
        return value

    def store_at(self, base: ir.Value, index: ir.Value, value: ir.Value) -> None:
        self.b.store(value, self.elem(base, index)).set_metadata("tbaa", self._tbaa("cell"))

    # node records (the nodes pointer is reloaded each time: mk may have moved it)
    def _node_index(self, node: ir.Value, f: int) -> ir.Value:
        return self.b.add(self.b.mul(node, c64(NODE_STRIDE)), c64(f))

    def nget(self, node: ir.Value, f: int) -> ir.Value:
        return self.load_at(self.get("nodes"), self._node_index(node, f))

    def nput(self, node: ir.Value, f: int, value: ir.Value) -> None:
        self.store_at(self.get("nodes"), self._node_index(node, f), value)

    def marked(self, node: ir.Value) -> ir.Value:
        return self.b.icmp_signed("==", self.nget(node, F_MARK), c64(2))

    def kid(self, offset: ir.Value, j: ir.Value) -> ir.Value:
        return self.load_at(self.get("kids"), self.b.add(offset, j))

    # control flow
    @contextmanager
    def loop(self, start: ir.Value, stop: ir.Value) -> Iterator[ir.Value]:
        """for (i = start; i < stop; i++) — `stop` is evaluated once."""
        i = self.var(start)
        head, body, done = self.block("loop"), self.block("body"), self.block("done")
        self.b.branch(head)
        self.b.position_at_end(head)
        cur = self.b.load(i, typ=I64)
        self.b.cbranch(self.b.icmp_signed("<", cur, stop), body, done)
        self.b.position_at_end(body)
        yield cur
        if not self.b.block.is_terminated:
            self.b.store(self.b.add(cur, c64(1)), i)
            self.b.branch(head)
        self.b.position_at_end(done)

    def return_if(self, cond: ir.Value, value: ir.Value) -> None:
        with self.b.if_then(cond, likely=False):
            self.b.ret(value)

    def return_if_error(self, value: ir.Value, below: int = 0) -> None:
        self.return_if(self.b.icmp_signed("<", value, c64(below)), value)


# Functions one module may call in another: declared wherever they are used, defined in one part.
SIGNATURES: dict[str, tuple[ir.Type, list[ir.Type]]] = {
    "malloc": (PTR, [I64]), "calloc": (PTR, [I64, I64]), "realloc": (PTR, [PTR, I64]), "free": (VOID, [PTR]),
    "farm_mk": (I64, [PTR, I64, I64, I64, PTR]), "farm_normalize": (I64, [PTR, I64]), "farm_fire": (I1, [PTR, I64]),
    "farm_match": (I64, [PTR, I64]), "farm_rule_count": (I64, []), "farm_op_count": (I64, []),
    "farm_op_arity": (I64, [I64]), "farm_arena_free": (VOID, [PTR]),
}
MATCH_OP_TYPE = ir.FunctionType(I64, [PTR, I64, I64])  # (arena, node, index of the op's first rule)
CHUNK_RULES = 64


class LLVMCodegen:
    """Builds the IR modules of one ruleset."""

    def __init__(self, ruleset: RuleSet, triple: str | None = None, tree_budget: int = NODE_BUDGET) -> None:
        self.ruleset = ruleset
        self.triple = triple
        self.tree_budget = tree_budget
        self.op_ids = {name: i for i, (name, _) in enumerate(ruleset.signature)}
        self.m = self._module()

    def _module(self) -> ir.Module:
        m = ir.Module(name="farm")
        if self.triple:
            m.triple = self.triple
        return m

    def _declared(self, name: str) -> ir.Function:
        """The function `name` in the current module: its definition if emitted, else a declaration."""
        existing = self.m.globals.get(name)
        if isinstance(existing, ir.Function):
            return existing
        ret, args = SIGNATURES[name]
        fn = ir.Function(self.m, ir.FunctionType(ret, args), name)
        fn.attributes.add("nounwind")
        return fn

    # ---- the three kinds of module ----

    def _emit_runtime(self) -> None:
        self._charge()
        self._reserve("reserve_nodes", "nodes", "n_nodes", "cap_nodes", ELEM_BYTES["nodes"])
        self._reserve("reserve_kids", "kids", "n_kids", "cap_kids", ELEM_BYTES["kids"])
        self._reserve("reserve_stack", "stack", "sp", "cap_stack", ELEM_BYTES["stack"])
        self._hash()
        self._node_equals()
        self._grow_table()
        self._mk()
        self._push()
        self._fire()
        self._normalize()
        self._rewrite()
        self._load()
        self._mark()
        self._export()
        self._arena_free()
        self._arena_new()
        for name, value in [("farm_abi_version", ABI_VERSION), ("farm_node_stride", NODE_STRIDE)]:
            _Fn(self.m, name, I64, [], internal=False).b.ret(c64(value))

    def _emit_manifest(self) -> None:
        self._dispatch()
        counts = [("farm_rule_count", len(self.ruleset.rules)), ("farm_op_count", len(self.ruleset.signature))]
        for name, value in counts:
            _Fn(self.m, name, I64, [], internal=False).b.ret(c64(value))
        self._op_arity()
        self._fingerprint()

    def _emit_op(self, op_name: str) -> None:
        rules = self.ruleset.rules_by_root()[op_name]
        op = self.op_ids[op_name]
        f = _Fn(self.m, f"farm_match_op{op}", I64, [PTR, I64, I64], internal=False)
        run(_TreeEmitter(self, f, base=f.args[2], first_rule=rules[0].index).emit(
            build_tree(rules, self.tree_budget), {(): f.args[1]}, None))

    def chunks(self) -> list[list[str]]:
        """Root operators grouped, in signature order, into chunks of at most CHUNK_RULES rules: one object
        each. Per-chunk rather than per-operator objects keep the number of tool runs low."""
        by_root = self.ruleset.rules_by_root()
        out: list[list[str]] = []
        size = 0
        for op_name, _ in self.ruleset.signature:
            if op_name not in by_root:
                continue
            if not out or size + len(by_root[op_name]) > CHUNK_RULES:
                out.append([])
                size = 0
            out[-1].append(op_name)
            size += len(by_root[op_name])
        return out

    def parts(self) -> list[tuple[str, str]]:
        """(name, IR text) of every module to compile and link for this ruleset, runtime first. A small
        ruleset is one module besides the runtime; a large one has a manifest and one module per chunk."""
        out = [("runtime", runtime_ir(self.triple))]
        chunks = self.chunks()
        self.m = self._module()
        self._emit_manifest()
        if len(chunks) <= 1:
            for op_name in chunks[0] if chunks else []:
                self._emit_op(op_name)
            return [*out, ("rules", str(self.m))]
        out.append(("manifest", str(self.m)))
        for i, chunk in enumerate(chunks):
            self.m = self._module()
            for op_name in chunk:
                self._emit_op(op_name)
            out.append((f"chunk{i}", str(self.m)))
        return out

    def single_module(self) -> str:
        self.m = self._module()
        self._emit_runtime()
        self._emit_manifest()
        for op_name in self.ruleset.rules_by_root():
            self._emit_op(op_name)
        return str(self.m)

    def max_arity(self) -> int:
        return max((a for _, a in self.ruleset.signature), default=0)

    def _call(self, f: _Fn, name: str, *args: ir.Value) -> ir.Value:
        existing = self.m.globals.get(name)
        fn = existing if isinstance(existing, ir.Function) else self._declared(name)
        return f.b.call(fn, list(args))

    def _new(self, name: str, ret: ir.Type, args: list[ir.Type], internal: bool = True) -> _Fn:
        return _Fn(self.m, name, ret, args, internal)

    def _charge(self) -> None:
        """charge(arena, old bytes, new bytes): account a block growing from old to new bytes in `held`;
        false (nothing changed) when that would take `held` past `limit`, the memory cap. Only the growth
        paths call it, so the cap costs nothing per node."""
        f = self._new("charge", I1, [PTR, I64, I64])
        b = f.b
        _, old, new = f.args
        held = b.add(b.sub(f.get("held"), old), new)
        f.return_if(b.icmp_signed(">", held, f.get("limit")), ir.Constant(I1, 0))
        f.put("held", held)
        b.ret(ir.Constant(I1, 1))

    def _reserve(self, name: str, ptr: str, count: str, cap: str, elem_bytes: int) -> None:
        """Make room for `need` more elements; false when the memory cap or realloc refuses (the old block
        stays valid)."""
        f = self._new(name, I1, [PTR, I64])
        b, need = f.b, f.args[1]
        want = b.add(f.get(count), need)
        old_cap = f.get(cap)
        f.return_if(b.icmp_signed("<=", want, old_cap), ir.Constant(I1, 1))
        old_bytes = b.mul(old_cap, c64(elem_bytes))
        # Doubling, but no further than the cap allows: the last growth before the cap uses what is left.
        fits = b.sdiv(b.add(b.sub(f.get("limit"), f.get("held")), old_bytes), c64(elem_bytes))
        f.return_if(b.icmp_signed("<", fits, want), ir.Constant(I1, 0))
        doubled = b.mul(old_cap, c64(2))
        new_cap = b.select(b.icmp_signed("<", doubled, want), want, doubled)
        new_cap = b.select(b.icmp_signed("<", fits, new_cap), fits, new_cap)
        new_bytes = b.mul(new_cap, c64(elem_bytes))
        f.return_if(b.not_(self._call(f, "charge", f.arena, old_bytes, new_bytes)), ir.Constant(I1, 0))
        grown = self._call(f, "realloc", f.get(ptr), new_bytes)
        with b.if_then(b.icmp_unsigned("==", grown, ir.Constant(PTR, None)), likely=False):
            self._call(f, "charge", f.arena, new_bytes, old_bytes)  # give back: it did not grow
            b.ret(ir.Constant(I1, 0))
        f.put(ptr, grown)
        f.put(cap, new_cap)
        b.ret(ir.Constant(I1, 1))

    def _hash(self) -> None:
        f = self._new("hash_node", I64, [I64, I64, I64, PTR])
        b = f.b
        op, arity, value, kids = f.args
        h = f.var(b.xor(b.xor(b.mul(op, c64(0x9E3779B97F4A7C15)), b.shl(arity, c64(32))), value))
        with f.loop(c64(0), arity) as j:
            mixed = b.mul(b.xor(b.load(h, typ=I64), f.load_at(kids, j)), c64(0xFF51AFD7ED558CCD))
            b.store(b.xor(mixed, b.lshr(mixed, c64(29))), h)
        final = b.load(h, typ=I64)
        b.ret(b.xor(final, b.lshr(final, c64(32))))

    def _node_equals(self) -> None:
        f = self._new("node_equals", I1, [PTR, I64, I64, I64, I64, PTR])
        b = f.b
        _, cand, op, arity, value, kids = f.args
        no, yes = ir.Constant(I1, 0), ir.Constant(I1, 1)
        f.return_if(b.icmp_signed("!=", f.nget(cand, F_OP), op), no)
        f.return_if(b.icmp_signed("!=", f.nget(cand, F_ARITY), arity), no)
        payload = f.nget(cand, F_PAYLOAD)
        with b.if_then(b.icmp_signed("==", op, c64(LIT_OP))):
            b.ret(b.icmp_signed("==", payload, value))
        with f.loop(c64(0), arity) as j:
            f.return_if(b.icmp_signed("!=", f.kid(payload, j), f.load_at(kids, j)), no)
        b.ret(yes)

    def _probe(self, f: _Fn, table: ir.Value, mask: ir.Value, start: ir.Value,
               on_slot: Callable[[ir.Value, ir.Value], None]) -> ir.Value:
        """Linear probing from `start`; `on_slot(index, slot)` may return out of the function.
        Returns the index of the first empty slot."""
        b = f.b
        i = f.var(b.and_(start, mask))
        head, occupied, empty = f.block("probe"), f.block("occupied"), f.block("empty")
        b.branch(head)
        b.position_at_end(head)
        idx = b.load(i, typ=I64)
        slot = f.load_at(table, idx)
        b.cbranch(b.icmp_signed("==", slot, c64(0)), empty, occupied)
        b.position_at_end(occupied)
        on_slot(idx, slot)
        b.store(b.and_(b.add(idx, c64(1)), mask), i)
        b.branch(head)
        b.position_at_end(empty)
        return b.load(i, typ=I64)

    def _grow_table(self) -> None:
        f = self._new("grow_table", I1, [PTR])
        b = f.b
        old_cap = b.add(f.get("table_mask"), c64(1))
        new_cap = b.mul(old_cap, c64(2))
        new_mask = b.sub(new_cap, c64(1))
        old_bytes, new_bytes = b.mul(old_cap, c64(ELEM_BYTES["table"])), b.mul(new_cap, c64(ELEM_BYTES["table"]))
        f.return_if(b.not_(self._call(f, "charge", f.arena, old_bytes, new_bytes)), ir.Constant(I1, 0))
        table = self._call(f, "calloc", new_cap, c64(ELEM_BYTES["table"]))
        with b.if_then(b.icmp_unsigned("==", table, ir.Constant(PTR, None)), likely=False):
            self._call(f, "charge", f.arena, new_bytes, old_bytes)
            b.ret(ir.Constant(I1, 0))
        with f.loop(c64(0), f.get("n_nodes")) as node:
            op = f.nget(node, F_OP)
            is_lit = b.icmp_signed("==", op, c64(LIT_OP))
            payload = f.nget(node, F_PAYLOAD)
            kids = f.elem(f.get("kids"), b.select(is_lit, c64(0), payload))
            h = self._call(f, "hash_node", op, f.nget(node, F_ARITY), b.select(is_lit, payload, c64(0)), kids)
            free_slot = self._probe(f, table, new_mask, h, lambda idx, slot: None)
            f.store_at(table, free_slot, self._slot(b, h, node))
        self._call(f, "free", f.get("table"))
        f.put("table", table)
        f.put("table_mask", new_mask)
        b.ret(ir.Constant(I1, 1))

    def _mk(self) -> None:
        """Hash-consing constructor: the existing node equal to (op, kids | value), or a new one.
        `kids` may point into the arena's own kids array only if the caller reserved `arity` slots first."""
        f = self._new("farm_mk", I64, [PTR, I64, I64, I64, PTR], internal=False)
        b = f.b
        arena, op, arity, value, kids = f.args
        full = b.icmp_signed(">", b.mul(b.add(f.get("n_nodes"), c64(1)), c64(2)), b.add(f.get("table_mask"), c64(1)))
        with b.if_then(full, likely=False):
            f.return_if(b.not_(self._call(f, "grow_table", arena)), c64(ERR_OOM))
        h = self._call(f, "hash_node", op, arity, value, kids)

        tag = b.lshr(h, c64(TAG_SHIFT))

        def on_slot(idx: ir.Value, slot: ir.Value) -> None:
            # Compare the stored hash tag first: a probe past another node's slot touches no node memory.
            with b.if_then(b.icmp_signed("==", b.lshr(slot, c64(TAG_SHIFT)), tag)):
                cand = b.sub(b.and_(slot, c64(SLOT_ID_MASK)), c64(1))
                f.return_if(self._call(f, "node_equals", arena, cand, op, arity, value, kids), cand)

        free_slot = self._probe(f, f.get("table"), f.get("table_mask"), h, on_slot)
        room = b.and_(self._call(f, "reserve_nodes", arena, c64(1)), self._call(f, "reserve_kids", arena, arity))
        f.return_if(b.not_(room), c64(ERR_OOM))
        node, offset = f.get("n_nodes"), f.get("n_kids")
        f.nput(node, F_OP, op)
        f.nput(node, F_ARITY, arity)
        f.nput(node, F_PAYLOAD, b.select(b.icmp_signed("==", op, c64(LIT_OP)), value, offset))
        f.nput(node, F_NF, c64(-1))
        f.nput(node, F_VIA, c64(-1))
        f.nput(node, F_MARK, c64(0))
        with f.loop(c64(0), arity) as j:
            f.store_at(f.get("kids"), b.add(offset, j), f.load_at(kids, j))
        f.put("n_kids", b.add(offset, arity))
        f.put("n_nodes", b.add(node, c64(1)))
        f.store_at(f.get("table"), free_slot, self._slot(b, h, node))
        b.ret(node)

    @staticmethod
    def _slot(b: ir.IRBuilder, h: ir.Value, node: ir.Value) -> ir.Value:
        """A table slot: the hash's high bits as a tag above node id + 1 (0 is an empty slot)."""
        return b.or_(b.shl(b.lshr(h, c64(TAG_SHIFT)), c64(TAG_SHIFT)), b.add(node, c64(1)))

    def _push(self) -> None:
        """Push a frame (node, next child = 0); a node already on the stack means a rewrite cycle."""
        f = self._new("push", I64, [PTR, I64])
        b = f.b
        arena, node = f.args
        f.return_if(b.icmp_signed("!=", f.nget(node, F_MARK), c64(0)), c64(ERR_CYCLE))
        f.return_if(b.not_(self._call(f, "reserve_stack", arena, c64(1))), c64(ERR_OOM))
        sp = f.get("sp")
        frame = b.mul(sp, c64(2))
        f.store_at(f.get("stack"), frame, node)
        f.store_at(f.get("stack"), b.add(frame, c64(1)), c64(0))
        f.put("sp", b.add(sp, c64(1)))
        f.nput(node, F_MARK, c64(1))
        b.ret(c64(0))

    def _fire(self) -> None:
        """Count a rule firing and one rewrite step; false once the fuel is spent."""
        f = self._new("farm_fire", I1, [PTR, I64], internal=False)
        b = f.b
        rule = f.args[1]
        counters = f.get("counters")
        f.store_at(counters, rule, b.add(f.load_at(counters, rule), c64(1)))
        steps = b.add(f.get("steps"), c64(1))
        f.put("steps", steps)
        f.put("last_rule", rule)
        b.ret(b.icmp_signed("<=", steps, f.get("fuel")))

    def _normalize(self) -> None:
        """Innermost normal form of `root`, memoised in the node records; re-entrant (conditions call it)."""
        f = self._new("farm_normalize", I64, [PTR, I64], internal=False)
        b = f.b
        arena, root = f.args
        known = f.nget(root, F_NF)
        f.return_if(b.icmp_signed("!=", known, c64(-1)), known)
        depth = b.add(f.get("depth"), c64(1))
        f.return_if(b.icmp_signed(">", depth, c64(MAX_CONDITION_DEPTH)), c64(ERR_DEPTH))
        f.put("depth", depth)
        base = f.get("sp")
        pushed = self._call(f, "push", arena, root)
        with b.if_then(b.icmp_signed("<", pushed, c64(0)), likely=False):
            f.put("depth", b.sub(f.get("depth"), c64(1)))
            b.ret(pushed)
        head, step, done, fail = f.block("frames"), f.block("step"), f.block("finished"), f.block("fail")
        code = f.var(c64(0))
        b.branch(head)

        b.position_at_end(head)
        b.cbranch(b.icmp_signed("==", f.get("sp"), base), done, step)

        b.position_at_end(step)
        top = b.mul(b.sub(f.get("sp"), c64(1)), c64(2))
        node = f.load_at(f.get("stack"), top)

        def finish(normal: ir.Value) -> None:
            f.nput(node, F_NF, normal)
            f.nput(node, F_MARK, c64(0))
            f.put("sp", b.sub(f.get("sp"), c64(1)))
            b.branch(head)

        def fail_with(value: ir.Value) -> None:
            with b.if_then(b.icmp_signed("<", value, c64(NO_MATCH))):
                b.store(value, code)
                b.branch(fail)

        via = f.nget(node, F_VIA)
        with b.if_then(b.icmp_signed("!=", via, c64(-1))):
            f.nput(node, F_VIA, c64(-1))
            finish(f.nget(via, F_NF))
        op = f.nget(node, F_OP)
        with b.if_then(b.icmp_signed("==", op, c64(LIT_OP))):
            finish(node)
        arity, offset = f.nget(node, F_ARITY), f.nget(node, F_PAYLOAD)
        # Descend into the first child without a normal form, if any.
        cursor = f.var(f.load_at(f.get("stack"), b.add(top, c64(1))))
        scan, check, descend, reduce_ = f.block("scan"), f.block("check"), f.block("descend"), f.block("reduce")
        b.branch(scan)
        b.position_at_end(scan)
        k = b.load(cursor, typ=I64)
        b.cbranch(b.icmp_signed("<", k, arity), check, reduce_)
        b.position_at_end(check)
        child = f.kid(offset, k)
        b.store(b.add(k, c64(1)), cursor)
        b.cbranch(b.icmp_signed("==", f.nget(child, F_NF), c64(-1)), descend, scan)
        b.position_at_end(descend)
        f.store_at(f.get("stack"), b.add(top, c64(1)), k)
        fail_with(self._call(f, "push", arena, child))
        b.branch(head)

        # All children normal: rebuild with normal children (staged at the end of the kids array).
        b.position_at_end(reduce_)
        fail_with(b.select(self._call(f, "reserve_kids", arena, arity), c64(0), c64(ERR_OOM)))
        stage = f.get("n_kids")
        changed = f.var(ir.Constant(I1, 0), I1)
        offset = f.nget(node, F_PAYLOAD)
        with f.loop(c64(0), arity) as j:
            normal = f.nget(f.kid(offset, j), F_NF)
            b.store(b.or_(b.load(changed, typ=I1), b.icmp_signed("!=", normal, f.kid(offset, j))), changed)
            f.store_at(f.get("kids"), b.add(stage, j), normal)
        reduced = f.var(node)
        with b.if_else(b.load(changed, typ=I1)) as (rebuilt, same):
            with rebuilt:
                m = self._call(f, "farm_mk", arena, op, arity, c64(0), f.elem(f.get("kids"), stage))
                fail_with(m)
                b.store(m, reduced)
            with same:
                t = self._call(f, "farm_match", arena, node)
                with b.if_then(b.icmp_signed("==", t, c64(NO_MATCH))):
                    finish(node)
                fail_with(t)
                b.store(t, reduced)
        target = b.load(reduced, typ=I64)
        target_nf = f.nget(target, F_NF)
        with b.if_then(b.icmp_signed("!=", target_nf, c64(-1))):
            finish(target_nf)
        fail_with(self._call(f, "push", arena, target))
        f.nput(node, F_VIA, target)
        b.branch(head)

        b.position_at_end(done)
        f.put("depth", b.sub(f.get("depth"), c64(1)))
        b.ret(f.nget(root, F_NF))

        # Unwind this call's frames so the arena stays usable for the next root.
        b.position_at_end(fail)
        with f.loop(base, f.get("sp")) as i:
            frame_node = f.load_at(f.get("stack"), b.mul(i, c64(2)))
            f.nput(frame_node, F_MARK, c64(0))
            f.nput(frame_node, F_VIA, c64(-1))
        f.put("sp", base)
        f.put("depth", b.sub(f.get("depth"), c64(1)))
        b.ret(b.load(code, typ=I64))

    def _rewrite(self) -> None:
        """farm_rewrite: normalise n roots; out[i] = normal form or error; info[2i..] = steps, last rule."""
        f = self._new("farm_rewrite", I64, [PTR, I64, PTR, PTR, PTR, I64], internal=False)
        b = f.b
        arena, n, roots, out, info, fuel = f.args
        f.put("fuel", fuel)
        with f.loop(c64(0), n) as i:
            f.put("steps", c64(0))
            f.put("last_rule", c64(-1))
            result = self._call(f, "farm_normalize", arena, f.load_at(roots, i))
            f.store_at(out, i, result)
            f.store_at(info, b.mul(i, c64(2)), f.get("steps"))
            f.store_at(info, b.add(b.mul(i, c64(2)), c64(1)), f.get("last_rule"))
        b.ret(c64(0))

    def _load(self) -> None:
        """farm_load: import a term graph given children-first as flat arrays (see docs/abi.md). The caller's
        arrays are only read: children are mapped into the arena's own staging area (reserved first, so
        farm_mk cannot move it)."""
        f = self._new("farm_load", I64, [PTR, I64, PTR, PTR, PTR, PTR, PTR], internal=False)
        b = f.b
        arena, n, ops, arities, values, kids, out = f.args
        bad = c64(ERR_INPUT)
        with f.loop(c64(0), n) as i:
            op = f.load_at(ops, i)
            f.return_if(b.icmp_signed("<", op, c64(LIT_OP)), bad)
            result = f.var(c64(0))
            with b.if_else(b.icmp_signed("==", op, c64(LIT_OP))) as (literal, app):
                with literal:
                    b.store(self._call(f, "farm_mk", arena, op, c64(0), f.load_at(values, i), ir.Constant(PTR, None)),
                            result)
                with app:
                    arity = f.load_at(arities, i)
                    f.return_if(b.icmp_signed("<", arity, c64(0)), bad)
                    with b.if_then(b.icmp_signed("<", op, self._call(f, "farm_op_count"))):
                        f.return_if(b.icmp_signed("!=", arity, self._call(f, "farm_op_arity", op)), bad)
                    offset = f.load_at(values, i)
                    f.return_if(b.not_(self._call(f, "reserve_kids", arena, arity)), c64(ERR_OOM))
                    stage = f.get("n_kids")
                    with f.loop(c64(0), arity) as j:
                        k = f.load_at(kids, b.add(offset, j))
                        f.return_if(b.or_(b.icmp_signed("<", k, c64(0)), b.icmp_signed(">=", k, i)), bad)
                        f.store_at(f.get("kids"), b.add(stage, j), f.load_at(out, k))
                    b.store(self._call(f, "farm_mk", arena, op, arity, c64(0), f.elem(f.get("kids"), stage)),
                            result)
            node = b.load(result, typ=I64)
            f.return_if_error(node)
            f.store_at(out, i, node)
        b.ret(c64(0))

    def _mark(self) -> None:
        """farm_mark: mark the nodes reachable from the (non-negative) roots; sizes[0..1] = nodes, children.
        Marks (F_MARK = 2) stay set for farm_export, which clears them."""
        f = self._new("farm_mark", I64, [PTR, I64, PTR, PTR], internal=False)
        b = f.b
        arena, n, roots, sizes = f.args
        nodes, kids = f.var(c64(0)), f.var(c64(0))
        base = f.get("sp")

        def visit(node: ir.Value) -> None:
            """Push an unmarked node (the stack's frames hold one node each here)."""
            with b.if_then(b.icmp_signed("==", f.nget(node, F_MARK), c64(0))):
                f.return_if(b.not_(self._call(f, "reserve_stack", arena, c64(1))), c64(ERR_OOM))
                sp = f.get("sp")
                f.store_at(f.get("stack"), b.mul(sp, c64(2)), node)
                f.put("sp", b.add(sp, c64(1)))
                f.nput(node, F_MARK, c64(2))
                b.store(b.add(b.load(nodes, typ=I64), c64(1)), nodes)

        with f.loop(c64(0), n) as i:
            root = f.load_at(roots, i)
            with b.if_then(b.icmp_signed(">=", root, c64(0))):
                visit(root)
        head, body, done = f.block("walk"), f.block("children"), f.block("walked")
        b.branch(head)
        b.position_at_end(head)
        b.cbranch(b.icmp_signed(">", f.get("sp"), base), body, done)
        b.position_at_end(body)
        sp = b.sub(f.get("sp"), c64(1))
        node = f.load_at(f.get("stack"), b.mul(sp, c64(2)))
        f.put("sp", sp)
        with b.if_then(b.icmp_signed("!=", f.nget(node, F_OP), c64(LIT_OP))):
            arity = f.nget(node, F_ARITY)
            b.store(b.add(b.load(kids, typ=I64), arity), kids)
            with f.loop(c64(0), arity) as j:
                visit(f.kid(f.nget(node, F_PAYLOAD), j))
        b.branch(head)
        b.position_at_end(done)
        f.store_at(sizes, c64(0), b.load(nodes, typ=I64))
        f.store_at(sizes, c64(1), b.load(kids, typ=I64))
        b.ret(c64(0))

    def _export(self) -> None:
        """farm_export: after farm_mark, write the marked nodes children-first, renumbered from 0, into the
        caller's columns (ops, vals, arities, kids: the TermGraph layout) and map the roots; clears marks."""
        f = self._new("farm_export", I64, [PTR, I64, PTR, PTR, PTR, PTR, PTR, PTR], internal=False)
        b = f.b
        arena, n, roots, out_roots, ops, vals, arities, kids = f.args
        count, written = f.var(c64(0)), f.var(c64(0))
        with f.loop(c64(0), f.get("n_nodes")) as node, b.if_then(f.marked(node)):
            fresh = b.load(count, typ=I64)
            op = f.nget(node, F_OP)
            f.store_at(ops, fresh, op)
            f.nput(node, F_VIA, fresh)  # children have smaller ids, so theirs are already assigned
            with b.if_else(b.icmp_signed("==", op, c64(LIT_OP))) as (literal, app):
                with literal:
                    f.store_at(vals, fresh, f.nget(node, F_PAYLOAD))
                    f.store_at(arities, fresh, c64(0))
                with app:
                    arity = f.nget(node, F_ARITY)
                    start = b.load(written, typ=I64)
                    f.store_at(vals, fresh, start)
                    f.store_at(arities, fresh, arity)
                    offset = f.nget(node, F_PAYLOAD)
                    with f.loop(c64(0), arity) as j:
                        f.store_at(kids, b.add(start, j), f.nget(f.kid(offset, j), F_VIA))
                    b.store(b.add(start, arity), written)
            b.store(b.add(fresh, c64(1)), count)
        with f.loop(c64(0), n) as i:
            root = f.load_at(roots, i)
            mapped = f.var(root)
            with b.if_then(b.icmp_signed(">=", root, c64(0))):
                b.store(f.nget(root, F_VIA), mapped)
            f.store_at(out_roots, i, b.load(mapped, typ=I64))
        with f.loop(c64(0), f.get("n_nodes")) as node, b.if_then(f.marked(node)):
            f.nput(node, F_MARK, c64(0))
            f.nput(node, F_VIA, c64(-1))
        b.ret(b.load(count, typ=I64))

    def _arena_new(self) -> None:
        f = self._new("farm_arena_new", PTR, [], internal=False)
        b = f.b
        arena = self._call(f, "calloc", c64(1), c64(8 * len(ARENA_FIELDS)))
        f.arena = arena
        f.return_if(b.icmp_unsigned("==", arena, ir.Constant(PTR, None)), ir.Constant(PTR, None))
        blocks = {"nodes": self._call(f, "malloc", c64(INITIAL["nodes"] * ELEM_BYTES["nodes"])),
                  "kids": self._call(f, "malloc", c64(INITIAL["kids"] * ELEM_BYTES["kids"])),
                  "table": self._call(f, "calloc", c64(INITIAL["table"]), c64(ELEM_BYTES["table"])),
                  "stack": self._call(f, "malloc", c64(INITIAL["stack"] * ELEM_BYTES["stack"])),
                  "counters": self._call(f, "calloc", b.add(self._call(f, "farm_rule_count"), c64(1)), c64(8))}
        for name, value in blocks.items():
            f.put(name, value)
        f.put("cap_nodes", c64(INITIAL["nodes"]))
        f.put("cap_kids", c64(INITIAL["kids"]))
        f.put("table_mask", c64(INITIAL["table"] - 1))
        f.put("cap_stack", c64(INITIAL["stack"]))
        f.put("last_rule", c64(-1))
        f.put("limit", c64(NO_LIMIT))
        f.put("held", c64(sum(INITIAL[name] * ELEM_BYTES[name] for name in INITIAL)))
        missing = ir.Constant(I1, 0)
        for value in blocks.values():
            missing = b.or_(missing, b.icmp_unsigned("==", value, ir.Constant(PTR, None)))
        with b.if_then(missing, likely=False):
            self._call(f, "farm_arena_free", arena)
            b.ret(ir.Constant(PTR, None))
        b.ret(arena)

    def _arena_free(self) -> None:
        f = _Fn(self.m, "farm_arena_free", VOID, [PTR], internal=False)
        b = f.b
        with b.if_then(b.icmp_unsigned("!=", f.arena, ir.Constant(PTR, None))):
            for name in ("nodes", "kids", "table", "stack", "counters"):
                self._call(f, "free", f.get(name))
            self._call(f, "free", f.arena)
        b.ret_void()

    def _fingerprint(self) -> None:
        """farm_fingerprint(): the ruleset's fingerprint, so a loader can refuse a library built for other rules."""
        text = bytearray(self.ruleset.fingerprint().encode() + b"\0")
        data = ir.GlobalVariable(self.m, ir.ArrayType(ir.IntType(8), len(text)), "fingerprint")
        data.linkage = "internal"
        data.global_constant = True
        data.initializer = ir.Constant(data.value_type, text)
        data.type = PTR  # referenced as `ptr`, not `[N x i8]*`
        f = _Fn(self.m, "farm_fingerprint", PTR, [], internal=False)
        f.b.ret(data)

    def _op_arity(self) -> None:
        f = _Fn(self.m, "farm_op_arity", I64, [I64], internal=False)
        unknown = f.block("unknown")
        switch = f.b.switch(f.args[0], unknown)
        for op, (_, arity) in enumerate(self.ruleset.signature):
            case = f.block(f"op{op}")
            switch.add_case(c64(op), case)
            f.b.position_at_end(case)
            f.b.ret(c64(arity))
        f.b.position_at_end(unknown)
        f.b.ret(c64(-1))

    def _dispatch(self) -> None:
        """farm_match: dispatch on the root operator to that operator's decision tree."""
        f = _Fn(self.m, "farm_match", I64, [PTR, I64], internal=False)
        node = f.args[1]
        no_match = f.block("no_match")
        switch = f.b.switch(f.nget(node, F_OP), no_match)
        for op_name, rules in self.ruleset.rules_by_root().items():
            op = self.op_ids[op_name]
            existing = self.m.globals.get(f"farm_match_op{op}")
            tree_fn = existing if isinstance(existing, ir.Function) else \
                ir.Function(self.m, MATCH_OP_TYPE, f"farm_match_op{op}")
            case = f.block(f"op{op}")
            switch.add_case(c64(op), case)
            f.b.position_at_end(case)
            f.b.ret(f.b.call(tree_fn, [f.arena, node, c64(rules[0].index)]))
        f.b.position_at_end(no_match)
        f.b.ret(c64(NO_MATCH))


class _TreeEmitter:
    """Lowers a decision tree (matchtree.py) into one function's blocks."""

    def __init__(self, gen: LLVMCodegen, f: _Fn, base: ir.Value, first_rule: int) -> None:
        """Rule indices are written relative to the op's first rule and offset by `base` (an argument),
        so this object does not change when rules of other operators are added or reordered."""
        self.gen, self.f, self.b = gen, f, f.b
        self.base, self.first_rule = base, first_rule
        self.scratch: ir.Value | None = None

    def emit(self, tree: Tree, env: dict[Occurrence, ir.Value], on_fail: ir.Block | None) -> Step[None]:
        """A trampoline step (farm/trampoline.py): trees are as deep as patterns are large."""
        b = self.b
        if isinstance(tree, Fail):
            if on_fail is not None:
                b.branch(on_fail)
            else:
                b.ret(c64(NO_MATCH))
        elif isinstance(tree, Chain):
            rest = self.f.block("next_chunk")
            yield self.emit(tree.first, env, rest)
            b.position_at_end(rest)
            yield self.emit(tree.rest, {(): env[()]}, on_fail)
        elif isinstance(tree, Switch):
            yield self._switch(tree, env, on_fail)
        else:
            yield self._leaf(tree, env, on_fail)

    def _switch(self, tree: Switch, env: dict[Occurrence, ir.Value], on_fail: ir.Block | None) -> Step[None]:
        b, f = self.b, self.f
        value = env[tree.occurrence]
        op = f.nget(value, F_OP)
        lits = [(h, t) for h, t in tree.cases if h[0] == "lit"]
        apps = [(h, t) for h, t in tree.cases if h[0] == "app"]
        default = f.block("default")
        if lits:
            lit_block, app_block = f.block("literal"), f.block("application")
            b.cbranch(b.icmp_signed("==", op, c64(LIT_OP)), lit_block, app_block)
            b.position_at_end(lit_block)
            sw = b.switch(f.nget(value, F_PAYLOAD), default)
            for head, sub in lits:
                case = f.block("lit")
                sw.add_case(c64(head[1]), case)  # type: ignore[arg-type]
                b.position_at_end(case)
                yield self.emit(sub, env, on_fail)
            b.position_at_end(app_block)
        sw = b.switch(op, default)
        for head, sub in apps:
            case = f.block("app")
            sw.add_case(c64(self.gen.op_ids[head[1]]), case)  # type: ignore[index]
            b.position_at_end(case)
            # One env for the whole tree, not a copy per case (quadratic in depth): each occurrence is
            # written once on any path from the root, so a subtree reads only what its own path wrote.
            inner = env
            if head[2]:
                offset = f.nget(value, F_PAYLOAD)
                for j in range(head[2]):
                    inner[tree.occurrence + (j,)] = f.kid(offset, c64(j))
            yield self.emit(sub, inner, on_fail)
        b.position_at_end(default)
        yield self.emit(tree.default, env, on_fail)

    def _leaf(self, leaf: Leaf, env: dict[Occurrence, ir.Value], on_fail: ir.Block | None) -> Step[None]:
        b, f = self.b, self.f
        bound = {name: env[occ] for name, occ in leaf.bindings.items()}
        otherwise = f.block("otherwise")
        tests = [b.icmp_signed("==", env[x], env[y]) for x, y in leaf.equalities]
        for test in tests:
            self._require(test, otherwise)
        for constraint in leaf.rule.constraints:
            self._require(self._guard(constraint, bound), otherwise)
        rule = b.add(self.base, c64(leaf.rule.index - self.first_rule))
        fuel_ok = self.gen._call(f, "farm_fire", f.arena, rule)
        f.return_if(b.not_(fuel_ok), c64(ERR_FUEL))
        b.ret(self._build(leaf.rule.target, bound))
        b.position_at_end(otherwise)
        yield self.emit(leaf.otherwise if leaf.otherwise is not None else Fail(), env, on_fail)

    def _require(self, cond: ir.Value, otherwise: ir.Block) -> None:
        passed = self.f.block("passed")
        self.b.cbranch(cond, passed, otherwise)
        self.b.position_at_end(passed)

    def _guard(self, c: Constraint, bound: dict[str, ir.Value]) -> ir.Value:
        b = self.b
        if isinstance(c, IsConst):
            return self._is_lit(bound[c.var.name])
        if isinstance(c, Compare):
            if c.op in ("==", "!="):
                same = self._same_term(c.left, c.right, bound)
                return same if c.op == "==" else b.not_(same)
            (lit_a, a), (lit_b, b_) = self._literal(c.left, bound), self._literal(c.right, bound)
            return b.and_(b.and_(lit_a, lit_b), b.icmp_signed(c.op, a, b_))
        left = self._normalized(c.left, bound)
        right = self._normalized(c.right, bound)
        return b.icmp_signed("==" if c.equal else "!=", left, right)

    def _normalized(self, expr: PatternExpr, bound: dict[str, ir.Value]) -> ir.Value:
        term = self._build(expr, bound)
        result = self.gen._call(self.f, "farm_normalize", self.f.arena, term)
        self.f.return_if_error(result)
        return result

    def _is_lit(self, node: ir.Value) -> ir.Value:
        return self.b.icmp_signed("==", self.f.nget(node, F_OP), c64(LIT_OP))

    def _literal(self, side: Var | Lit, bound: dict[str, ir.Value]) -> tuple[ir.Value, ir.Value]:
        if isinstance(side, Lit):
            return ir.Constant(I1, 1), c64(side.value)
        node = bound[side.name]
        return self._is_lit(node), self.f.nget(node, F_PAYLOAD)

    def _same_term(self, left: Var | Lit, right: Var | Lit, bound: dict[str, ir.Value]) -> ir.Value:
        """Term equality without building anything: hash-consing makes it id equality."""
        b = self.b
        if isinstance(left, Var) and isinstance(right, Var):
            return b.icmp_signed("==", bound[left.name], bound[right.name])
        if isinstance(left, Lit) and isinstance(right, Lit):
            return ir.Constant(I1, int(left.value == right.value))
        var, lit = (left, right) if isinstance(left, Var) else (right, left)
        is_lit, value = self._literal(var, bound)  # type: ignore[arg-type]
        return b.and_(is_lit, b.icmp_signed("==", value, c64(lit.value)))  # type: ignore[union-attr]

    def _scratch(self) -> ir.Value:
        """One kids buffer per function, in the entry block; children are computed before it is filled."""
        if self.scratch is None:
            f = self.f
            with f.b.goto_block(f.entry):
                f.b.position_at_start(f.entry)
                self.scratch = opaque(f.b.alloca(I64, size=max(1, self.gen.max_arity())))
        return self.scratch

    def _build(self, expr: PatternExpr, bound: dict[str, ir.Value]) -> ir.Value:
        return run(self._build_step(expr, bound))

    def _build_step(self, expr: PatternExpr, bound: dict[str, ir.Value]) -> Step[ir.Value]:
        f = self.f
        if isinstance(expr, Var):
            return bound[expr.name]
        if isinstance(expr, (Lit, Computed)):
            value = c64(expr.value) if isinstance(expr, Lit) else self._arith(expr.expr, bound)
            node = self.gen._call(f, "farm_mk", f.arena, c64(LIT_OP), c64(0), value, ir.Constant(PTR, None))
        else:
            assert isinstance(expr, App)
            kids = []
            for arg in expr.args:
                kids.append((yield self._build_step(arg, bound)))
            buf = self._scratch() if kids else ir.Constant(PTR, None)
            for j, kid in enumerate(kids):
                f.store_at(buf, c64(j), kid)
            node = self.gen._call(f, "farm_mk", f.arena, c64(self.gen.op_ids[expr.op]), c64(len(kids)), c64(0), buf)
        f.return_if_error(node)
        return node

    def _arith(self, expr: LitExpr, bound: dict[str, ir.Value]) -> ir.Value:
        return run(self._arith_step(expr, bound))

    def _arith_step(self, expr: LitExpr, bound: dict[str, ir.Value]) -> Step[ir.Value]:
        b = self.b
        if isinstance(expr, Lit):
            return c64(expr.value)
        if isinstance(expr, Var):
            return self.f.nget(bound[expr.name], F_PAYLOAD)
        if isinstance(expr, Neg):
            return b.sub(c64(0), (yield self._arith_step(expr.operand, bound)))
        assert isinstance(expr, BinOp)
        x = yield self._arith_step(expr.left, bound)
        y = yield self._arith_step(expr.right, bound)
        ops = {"+": b.add, "-": b.sub, "*": b.mul, "/": b.sdiv, "%": b.srem, "&": b.and_, "|": b.or_, "^": b.xor}
        if expr.op in ops:
            return ops[expr.op](x, y)
        shift = b.and_(y, c64(63))
        return b.shl(x, shift) if expr.op == "<<" else b.ashr(x, shift)


_IR_MEMO: OrderedDict[tuple[str, str | None, int, str], object] = OrderedDict()
_IR_MEMO_SIZE = 64


def _memo(kind: str, ruleset: RuleSet, triple: str | None, tree_budget: int, make: Callable[[], object]) -> object:
    """IR is a pure function of the ruleset: memoised by fingerprint, so a cache hit does not pay for
    code generation just to compute its key."""
    key = (ruleset.fingerprint(), triple, tree_budget, kind)
    value = _IR_MEMO.get(key)
    if value is None:
        value = _IR_MEMO[key] = make()
        while len(_IR_MEMO) > _IR_MEMO_SIZE:
            _IR_MEMO.popitem(last=False)
    _IR_MEMO.move_to_end(key)
    return value


@cache
def runtime_ir(triple: str | None) -> str:
    """The ruleset-independent module: arena, hash-consing, normaliser and the exported API."""
    from farm.transduce import RuleSet as _RuleSet

    gen = LLVMCodegen(_RuleSet((), ()), triple)
    gen._emit_runtime()
    return str(gen.m)


def generate_llvm_ir(ruleset: RuleSet, triple: str | None = None, tree_budget: int = NODE_BUDGET) -> str:
    """The whole ruleset as one module (opaque pointers; accepted by llvm-16 tools and llvmlite)."""
    return _memo("single", ruleset, triple, tree_budget,
                 lambda: LLVMCodegen(ruleset, triple, tree_budget).single_module())  # type: ignore[return-value]


def ruleset_parts(ruleset: RuleSet, triple: str | None = None,
                  tree_budget: int = NODE_BUDGET) -> list[tuple[str, str]]:
    """The ruleset as separately compiled modules: runtime, manifest, one per root operator."""
    return _memo("parts", ruleset, triple, tree_budget,
                 lambda: LLVMCodegen(ruleset, triple, tree_budget).parts())  # type: ignore[return-value]
