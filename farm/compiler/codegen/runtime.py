"""The runtime module: the same for every ruleset (per target, CPU and -O level).

It owns the heap of hash-consed nodes and its copying collector, the hash-consing table, the memo of
memoised calls, the shadow stack whose node ids are the collector's roots, and the exported entry points:
rewriting a term graph given as columns (farm_rewrite) and exporting the normal forms (farm_mark,
farm_export). The rules' code (farm/compiler/codegen/operators.py) calls into it through RUNTIME_CALLS.

Node ids are word offsets into the current space. A collection copies the live nodes (Cheney) into the
spare space and swaps: every id changes, so whatever holds ids across a call that may allocate keeps them on
the shadow stack (or in the memo, the input rows' normal forms or the results), which the collector rewrites.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from llvmlite import ir

from farm.compiler.codegen.abi import (
    ABI_VERSION,
    ARENA_FIELDS,
    CONTENT_AT,
    ERR_CYCLE,
    ERR_INPUT,
    ERR_OOM,
    FORWARDED,
    IN_PROGRESS,
    LIT_OP,
    MARK_BASE,
    NO_LIMIT,
    NO_MATCH,
    NO_PARENT,
    PARENT_AT,
    SHARED_PARENT,
)
from farm.compiler.codegen.irbuild import (
    FALSE,
    I1,
    I64,
    NULL,
    PTR,
    TRUE,
    VOID,
    FunctionBuilder,
    c64,
    declare,
    export_type,
)
from farm.semantics import MAX_MEMO_ENTRIES

# Functions one module calls in another (runtime <-> rules), besides the exports of abi.EXPORTS.
RUNTIME_CALLS: dict[str, ir.FunctionType] = {
    "malloc": ir.FunctionType(PTR, [I64]), "calloc": ir.FunctionType(PTR, [I64, I64]),
    "realloc": ir.FunctionType(PTR, [PTR, I64]), "free": ir.FunctionType(VOID, [PTR]),
    "farm_intern": ir.FunctionType(I64, [PTR, I64, I64, PTR]),  # (arena, header, words, words*) -> id
    "farm_lit": ir.FunctionType(I64, [PTR, I64]),  # (arena, value) -> id of the literal
    "farm_grow_roots": ir.FunctionType(I1, [PTR, I64]),  # (arena, cells needed in all) -> grown?
    "farm_memo_enter": ir.FunctionType(I64, [PTR, I64, I64, PTR]),  # (arena, op, arity, args*)
    "farm_memo_leave": ir.FunctionType(VOID, [PTR, I64, I64, PTR, I64]),  # (arena, op, arity, args*, nf)
    "farm_track_enter": ir.FunctionType(I64, [PTR, I64, I64, PTR]),  # (arena, op, arity, args*)
    "farm_track_leave": ir.FunctionType(VOID, [PTR, I64, I64, PTR]),  # (arena, op, arity, args*)
    "farm_call": ir.FunctionType(I64, [PTR, I64, I64, PTR]),  # (arena, op, arity, args*): in the rules
    "farm_op_arity": ir.FunctionType(I64, [I64]),  # a ruleset operator's arity: in the rules
    "farm_op_first_rule": ir.FunctionType(I64, [I64]),  # the index of its first rule: in the rules
}
LIT_HEADER = LIT_OP & 0xFFFFFFFF
INITIAL_WORDS = 1 << 16  # each space; a space grows when the live nodes fill more than 1 / LIVE_FRACTION of it
LIVE_FRACTION = 8
SURVIVAL_NUMERATOR, SURVIVAL_DENOMINATOR = 7, 8  # a collection keeping more than 7/8 of the space: grow next
MIN_TABLE = 1 << 12  # the hash-consing table's slots at first; a collection may shrink it back to this
INITIAL_MEMO = 1 << 8
INITIAL_CELLS = 1 << 10  # shadow stack and work stack
NO_NODE = -1  # the walk's way back up from a root: there is none
TAG_SHIFT = 36  # a table slot: the hash's high bits above (node id + 1); ids below 2^36 words
# Where an entry's arguments start: memo entries are (tag, normal form, arguments), tracked calls (tag, arguments).
ARGS_AT = {"memo": 2, "track": 1}
# The tracked calls' table stays at most 1/8 full while small (up to 2^16 slots, 2 MiB for calls of arity
# 3), half full beyond: a call's first slot is then mostly free when it starts and the slot after it free
# when it returns, the two cases the rules' code does inline (sieve: 29% faster than half full).
SPARSE_TRACK_SLOTS = 1 << 16


def track_room(f: FunctionBuilder, count: ir.Value, slots: ir.Value) -> ir.Value:
    """Whether the tracked calls' table of `slots` may take one more call beside `count`."""
    b = f.b
    sparseness = b.select(b.icmp_signed("<", slots, c64(SPARSE_TRACK_SLOTS)), c64(8), c64(2))
    return b.icmp_signed("<=", b.mul(b.add(count, c64(1)), sparseness), slots)


K1, K2 = 0x9E3779B97F4A7C15, 0xFF51AFD7ED558CCD


def call(f: FunctionBuilder, name: str, *args: ir.Value) -> ir.Value:
    """A call to a function of this module, or of another part (RUNTIME_CALLS, abi.EXPORTS)."""
    existing = f.module.globals.get(name)
    if isinstance(existing, ir.Function):
        return f.b.call(existing, list(args))
    fnty = RUNTIME_CALLS.get(name) or export_type(name)
    return f.b.call(declare(f.module, name, fnty), list(args))


def header(f: FunctionBuilder, op: ir.Value, arity: ir.Value) -> ir.Value:
    return f.b.or_(f.b.shl(arity, c64(32)), f.b.and_(op, c64(0xFFFFFFFF)))


def node_content(f: FunctionBuilder, head: ir.Value) -> ir.Value:
    """Words after the header that identify a node: a literal's value, an application's children."""
    return f.b.select(f.b.icmp_signed("==", head, c64(LIT_HEADER)), c64(1), f.arity_of(head))


def node_words(f: FunctionBuilder, head: ir.Value) -> ir.Value:
    """Words a node takes: the header, its content, its parent word."""
    return f.b.add(node_content(f, head), c64(2))


def parent_at(f: FunctionBuilder, node: ir.Value) -> ir.Value:
    """The index of a node's parent word in the current space."""
    return f.b.add(node, c64(PARENT_AT))


def same_node(f: FunctionBuilder, cand: ir.Value, head: ir.Value, content_equal: Callable[[ir.Value], ir.Value],
              found: ir.Block) -> None:
    """Branch to `found` when node `cand` has this header and content_equal(cand); fall through otherwise.
    The content is read only once the header matched: a node of another arity may end before it."""
    b = f.b
    content, differs = f.block("same_head"), f.block("differs")
    b.cbranch(b.icmp_signed("==", f.word(cand, 0), head), content, differs)
    b.position_at_end(content)
    b.cbranch(content_equal(cand), found, differs)
    b.position_at_end(differs)


class RuntimeModule:
    def __init__(self, module: ir.Module) -> None:
        self.m = module

    def new(self, name: str, ret: ir.Type, args: list[ir.Type], internal: bool = True) -> FunctionBuilder:
        return FunctionBuilder(self.m, name, ret, args, internal)

    def export(self, name: str) -> FunctionBuilder:
        fnty = export_type(name)
        return FunctionBuilder(self.m, name, fnty.return_type, list(fnty.args), internal=False)

    def emit(self) -> None:
        for part in (self._charge, self._grow_array, self._hash, self._rebuild_table, self._intern, self._lit,
                     self._forward, self._collect, self._grow_spaces, self._grow_roots, self._memo_rebuild,
                     self._entry_find, self._memo_enter, self._memo_leave, self._track_rebuild, self._track_enter,
                     self._track_leave, self._check_rows, self._normalize_row, self._rewrite, self._walk, self._mark,
                     self._export, self._unmark, self._arena_free, self._arena_new):
            part()
        f = self.export("farm_abi_version")
        f.b.ret(c64(ABI_VERSION))

    # ---- memory ----

    def _charge(self) -> None:
        """charge(arena, old bytes, new bytes): account a block changing size in `held`; false (nothing
        changed) when growth would take `held` past `limit`, the memory cap."""
        f = self.new("charge", I1, [PTR, I64, I64])
        b = f.b
        _, old, new = f.args
        held = b.add(b.sub(f.get("held"), old), new)
        # The native stack the calls in progress use is memory too (deep recursion at -O0: hundreds of bytes
        # a call): it counts toward the cap, measured from here, where memory is asked for.
        top = f.get("stack_top")
        stack = b.select(b.icmp_signed(">", top, c64(0)), b.sub(top, b.ptrtoint(f.buffer(1), I64)), c64(0))
        total = b.add(held, stack)
        f.return_if(b.and_(b.icmp_signed(">", new, old), b.icmp_signed(">", total, f.get("limit"))), FALSE)
        f.put("held", held)
        b.ret(TRUE)

    def _grow_array(self) -> None:
        """grow_array(arena, field ptr, capacity ptr, cells needed): an i64 array at least that large, by
        doubling; false when the cap or realloc refuses (the old array stays valid)."""
        f = self.new("grow_array", I1, [PTR, PTR, PTR, I64])
        b = f.b
        _, slot, cap_slot, need = f.args
        old_cap = b.load(cap_slot, typ=I64)
        f.return_if(b.icmp_signed("<=", need, old_cap), TRUE)
        doubled = b.mul(old_cap, c64(2))
        new_cap = b.select(b.icmp_signed("<", doubled, need), need, doubled)
        old_bytes, new_bytes = b.mul(old_cap, c64(8)), b.mul(new_cap, c64(8))
        f.return_if(b.not_(call(f, "charge", f.arena, old_bytes, new_bytes)), FALSE)
        grown = call(f, "realloc", b.load(slot, typ=PTR), new_bytes)
        with b.if_then(b.icmp_unsigned("==", grown, NULL), likely=False):
            call(f, "charge", f.arena, new_bytes, old_bytes)
            b.ret(FALSE)
        b.store(grown, slot)
        b.store(new_cap, cap_slot)
        b.ret(TRUE)

    def grow(self, f: FunctionBuilder, field: str, cap: str, need: ir.Value) -> ir.Value:
        return call_internal(f, "grow_array", I1, [PTR, PTR, PTR, I64], f.arena, f._field(field), f._field(cap),
                             need)

    # ---- hash-consing ----

    def _hash(self) -> None:
        f = self.new("hash_words", I64, [I64, I64, PTR])
        b = f.b
        head, n, words = f.args
        h = f.var(b.mul(head, c64(K1)))
        with f.loop(c64(0), n) as j:
            mixed = b.mul(b.xor(f.read(h), f.load_at(words, j, "any")), c64(K2))
            b.store(b.xor(mixed, b.lshr(mixed, c64(29))), h)
        final = f.read(h)
        b.ret(b.xor(final, b.lshr(final, c64(32))))

    def hash_of(self, f: FunctionBuilder, head: ir.Value, n: ir.Value, words: ir.Value) -> ir.Value:
        return call_internal(f, "hash_words", I64, [I64, I64, PTR], head, n, words)

    @staticmethod
    def probe(f: FunctionBuilder, mask: ir.Value, start: ir.Value, occupied: Callable[[ir.Value], ir.Value],
              matches: Callable[[ir.Value], None]) -> ir.Value:
        """Linear probing from `start` until `occupied(index)` is false; `matches(index)` runs on each
        occupied slot and may return out of the function. The index of the first free slot."""
        b = f.b
        i = f.var(b.and_(start, mask))
        head, busy, free = f.block("probe"), f.block("occupied"), f.block("free")
        b.branch(head)
        b.position_at_end(head)
        idx = f.read(i)
        b.cbranch(occupied(idx), busy, free)
        b.position_at_end(busy)
        matches(idx)
        b.store(b.and_(b.add(idx, c64(1)), mask), i)
        b.branch(head)
        b.position_at_end(free)
        return f.read(i)

    @staticmethod
    def slot_of(f: FunctionBuilder, h: ir.Value, node: ir.Value) -> ir.Value:
        return f.b.or_(f.b.shl(f.b.lshr(h, c64(TAG_SHIFT)), c64(TAG_SHIFT)), f.b.add(node, c64(1)))

    def _rebuild_table(self) -> None:
        """rebuild_table(arena, slots): a table of `slots` (a power of two) holding the nodes of the current
        space that are not their last child's registered parent; false when out of memory (the old table
        stays). A table of the same size is cleared and reused."""
        f = self.new("rebuild_table", I1, [PTR, I64])
        b = f.b
        slots = f.args[1]
        old_slots = b.add(f.get("table_mask"), c64(1))
        table = f.var(f.get("table"), PTR)
        with b.if_else(b.icmp_signed("==", slots, old_slots)) as (reuse, fresh):
            with reuse, f.loop(c64(0), slots) as i:
                f.store_at(f.read(table, PTR), i, c64(0))
            with fresh:
                old_bytes, new_bytes = b.mul(old_slots, c64(8)), b.mul(slots, c64(8))
                f.return_if(b.not_(call(f, "charge", f.arena, old_bytes, new_bytes)), FALSE)
                block = call(f, "calloc", slots, c64(8))
                with b.if_then(b.icmp_unsigned("==", block, NULL), likely=False):
                    call(f, "charge", f.arena, new_bytes, old_bytes)
                    b.ret(FALSE)
                call(f, "free", f.get("table"))
                b.store(block, table)
        table = f.read(table, PTR)
        mask = b.sub(slots, c64(1))
        count = f.var(c64(0))
        with heap_nodes(f, lambda: f.get("heap"), lambda: f.get("top")) as (at, head):
            kids = b.select(b.icmp_signed("==", head, c64(LIT_HEADER)), c64(0), f.arity_of(head))
            registered = f.var(FALSE, I1)  # found through its last child's parent word instead
            with b.if_then(b.icmp_signed(">", kids, c64(0))):
                last = f.content(at, b.sub(kids, c64(1)))
                b.store(b.icmp_signed("==", f.word(parent_at(f, last), 0), at), registered)
            with b.if_then(b.not_(f.read(registered, I1))):
                h = self.hash_of(f, head, node_content(f, head), f.elem(f.get("heap"), b.add(at, c64(CONTENT_AT))))
                free = self.probe(f, mask, h, lambda idx: b.icmp_signed("!=", f.load_at(table, idx), c64(0)),
                                  lambda idx: None)
                f.store_at(table, free, self.slot_of(f, h, at))
                b.store(b.add(f.read(count), c64(1)), count)
        f.put("table", table)
        f.put("table_mask", mask)
        f.put("table_count", f.read(count))
        b.ret(TRUE)

    def _intern(self) -> None:
        """farm_intern(arena, header, n, words): the node with this header and content (n children, or a
        literal's value), shared: the existing one, or a new one. `words` must be on the shadow stack (or
        hold no ids): allocating may collect, which rewrites them.

        A node is found through its last child's parent word or through the table. Built on a last child
        that was never a last child (NO_PARENT), it is new: it becomes that child's registered parent and
        stays out of the table, so a term built bottom-up, each node on a fresh one (a list cell on the list
        just built, s(n) on the numeral just computed), never touches the table (a random access, the
        hash-consing cost that dominated list programs)."""
        f = self.new("farm_intern", I64, [PTR, I64, I64, PTR], internal=False)
        b = f.b
        arena, head, n, words = f.args
        size = b.add(n, c64(2))
        with b.if_then(b.icmp_signed(">", b.add(f.get("top"), size), f.get("cap")), likely=False):
            f.return_if_error(call_internal(f, "collect", I64, [PTR, I64], arena, size))
        kids = b.select(b.icmp_signed("==", head, c64(LIT_HEADER)), c64(0), n)

        def kid(j: ir.Value) -> ir.Value:
            return f.load_at(words, j, "any")

        with b.if_then(b.icmp_signed(">", kids, c64(0))):
            last = parent_at(f, kid(b.sub(kids, c64(1))))
            parent = f.word(last, 0)
            with b.if_then(b.icmp_signed("==", parent, c64(NO_PARENT))):
                node = self._build(f, head, n, kid)
                f.set_word(last, 0, node)
                b.ret(node)
            with b.if_then(b.icmp_signed(">=", parent, c64(0))):
                found = f.block("registered")
                same_node(f, parent, head, lambda node: self._content_equal(f, node, n, kid), found)
                with b.goto_block(found):
                    b.ret(parent)
        h, free = self._table_find(f, head, n, words, kid)
        node = self._build(f, head, n, kid)
        f.store_at(f.get("table"), free, self.slot_of(f, h, node))
        f.bump("table_count", 1)
        b.ret(node)

    def _table_find(self, f: FunctionBuilder, head: ir.Value, n: ir.Value, words: ir.Value,
                    kid: Callable[[ir.Value], ir.Value]) -> tuple[ir.Value, ir.Value]:
        """Return the node in the table with this header and content from the function; else (the hash,
        the free slot where it goes). Grows the table first when it would pass half full."""
        b = f.b
        slots = b.add(f.get("table_mask"), c64(1))
        with b.if_then(b.icmp_signed(">", b.mul(b.add(f.get("table_count"), c64(1)), c64(2)), slots), likely=False):
            grown = call_internal(f, "rebuild_table", I1, [PTR, I64], f.arena, b.mul(slots, c64(2)))
            f.return_if_false(grown, ERR_OOM)
        h = self.hash_of(f, head, n, words)
        tag = b.lshr(h, c64(TAG_SHIFT))
        table = f.get("table")

        def matches(idx: ir.Value) -> None:
            slot = f.load_at(table, idx)
            with b.if_then(b.icmp_signed("==", b.lshr(slot, c64(TAG_SHIFT)), tag)):
                cand = b.sub(b.and_(slot, c64((1 << TAG_SHIFT) - 1)), c64(1))
                found = f.block("in_table")
                same_node(f, cand, head, lambda node: self._content_equal(f, node, n, kid), found)
                with b.goto_block(found):
                    b.ret(cand)

        free = self.probe(f, f.get("table_mask"), h,
                          lambda idx: b.icmp_signed("!=", f.load_at(table, idx), c64(0)), matches)
        return h, free

    @staticmethod
    def _content_equal(f: FunctionBuilder, node: ir.Value, n: ir.Value, kid: Callable[[ir.Value], ir.Value]) \
            -> ir.Value:
        b = f.b
        same = f.var(TRUE, I1)
        with f.loop(c64(0), n) as j:
            b.store(b.and_(f.read(same, I1), b.icmp_signed("==", f.content(node, j), kid(j))), same)
        return f.read(same, I1)

    @staticmethod
    def _build(f: FunctionBuilder, head: ir.Value, n: ir.Value, kid: Callable[[ir.Value], ir.Value]) -> ir.Value:
        """A new node at `top` (the caller made room): header, content, no parent yet."""
        b = f.b
        node = f.get("top")
        f.set_word(node, 0, head)
        f.set_word(node, PARENT_AT, c64(NO_PARENT))
        with f.loop(c64(0), n) as j:
            f.set_word(node, b.add(j, c64(CONTENT_AT)), kid(j))
        f.put("top", b.add(node, b.add(n, c64(2))))
        return node

    def _lit(self) -> None:
        f = self.new("farm_lit", I64, [PTR, I64], internal=False)
        cell = f.buffer(1)
        f.b.store(f.args[1], cell)
        f.b.ret(call(f, "farm_intern", f.arena, c64(LIT_HEADER), c64(1), cell))

    # ---- the collector ----

    def _forward(self) -> None:
        """forward(arena, to, to_top*, id): the node's id in to-space, copying it there on first sight."""
        f = self.new("forward", I64, [PTR, PTR, PTR, I64])
        b = f.b
        _, to, to_top, node = f.args
        f.return_if(b.icmp_signed("<", node, c64(0)), node)
        head = f.word(node, 0)
        f.return_if(b.icmp_signed("==", head, c64(FORWARDED)), f.word(node, 1))
        fresh = b.load(to_top, typ=I64)
        size = node_words(f, head)
        with f.loop(c64(0), size) as j:
            f.store_at(to, b.add(fresh, j), f.word(node, j), "heap")
        b.store(b.add(fresh, size), to_top)
        f.set_word(node, 0, c64(FORWARDED))
        f.set_word(node, 1, fresh)
        b.ret(fresh)

    def _forward_cells(self, f: FunctionBuilder, to: ir.Value, to_top: ir.Value, base: ir.Value,
                       start: ir.Value, stop: ir.Value, kind: str = "cell") -> None:
        """Rewrite the ids in cells base[start .. stop) (of alias class `kind`) to their to-space ids."""
        with f.loop(start, stop) as i:
            moved = call_internal(f, "forward", I64, [PTR, PTR, PTR, I64], f.arena, to, to_top,
                                  f.load_at(base, i, kind))
            f.store_at(base, i, moved, kind)

    def _forward_entries(self, f: FunctionBuilder, to: ir.Value, to_top: ir.Value, kind: str) -> None:
        """Rewrite the ids in the memo's or the tracked calls' entries (kind): after the tag, the memo's
        value and arguments, or the arguments."""
        b = f.b
        width = f.get(f"{kind}_width")
        with b.if_then(b.icmp_signed(">", width, c64(0))):
            table = f.get(kind)
            with f.loop(c64(0), b.add(f.get(f"{kind}_mask"), c64(1))) as slot:
                entry = b.mul(slot, width)
                tag = f.load_at(table, entry)
                with b.if_then(b.icmp_signed("!=", tag, c64(0))):
                    stop = b.add(b.add(entry, c64(ARGS_AT[kind])), f.arity_of(tag))
                    self._forward_cells(f, to, to_top, table, b.add(entry, c64(1)), stop)

    def _collect(self) -> None:
        """collect(arena, words needed): copy the live nodes into the spare space and swap; rebuild the
        table and the memo's index; grow both spaces when the live nodes fill more than 1 / LIVE_FRACTION.
        0, or ERR_OOM."""
        f = self.new("collect", I64, [PTR, I64])
        b = f.b
        arena, need = f.args
        self._grow_instead(f)
        scanned = f.get("top")
        to = f.get("spare")
        to_top = f.var(c64(0))
        self._forward_cells(f, to, to_top, f.get("roots"), c64(0), f.get("rsp"), "roots")
        self._forward_cells(f, to, to_top, f.get("nf"), c64(0), f.get("n_rows"))
        self._forward_cells(f, to, to_top, f.get("out"), c64(0), f.get("n_out"))
        for kind in ARGS_AT:
            self._forward_entries(f, to, to_top, kind)
        with heap_nodes(f, lambda: to, lambda: f.read(to_top)) as (at, head), \
                b.if_then(b.icmp_signed("!=", head, c64(LIT_HEADER))):
            start = b.add(at, c64(CONTENT_AT))
            self._forward_cells(f, to, to_top, to, start, b.add(start, f.arity_of(head)), "heap")
        old, old_cap = f.get("heap"), f.get("cap")
        f.put("heap", to)
        f.put("cap", f.get("spare_cap"))
        f.put("spare", old)
        f.put("spare_cap", old_cap)
        top = f.read(to_top)
        f.put("top", top)
        self._forward_parents(f, top)
        f.bump("collections", 1)
        kept_most = b.icmp_signed(">", b.mul(top, c64(SURVIVAL_DENOMINATOR)), b.mul(scanned, c64(SURVIVAL_NUMERATOR)))
        f.put("grow_next", b.zext(kept_most, I64))
        with b.if_then(b.icmp_signed(">", top, f.get("peak_words"))):
            f.put("peak_words", top)
        # Each collection copies the live nodes: keeping the space at least LIVE_FRACTION times the live
        # nodes bounds that to 1 / (LIVE_FRACTION - 1) word copied per word allocated.
        wanted = b.add(top, need)
        with b.if_then(b.icmp_signed(">", b.mul(wanted, c64(LIVE_FRACTION)), f.get("cap"))):
            grown = call_internal(f, "grow_spaces", I1, [PTR, I64], arena, b.mul(wanted, c64(LIVE_FRACTION)))
            with b.if_then(b.not_(b.or_(grown, b.icmp_signed("<=", wanted, f.get("cap"))))):
                # Out of room: the memo's finished entries go first (they only save steps), then it is an error.
                with b.if_then(b.icmp_signed(">", f.get("memo_done"), c64(0))):
                    call_internal(f, "memo_rebuild", I1, [PTR, I64, I64], arena, b.add(f.get("memo_mask"), c64(1)),
                                  c64(2))
                    b.ret(call_internal(f, "collect", I64, [PTR, I64], arena, need))
                b.ret(c64(ERR_OOM))
        # The table's nodes that survived are at most those it held: a table twice that size (or the same
        # one, cleared) stays at most half full; it grows when nodes are filed faster than collections run.
        slots = table_slots(f, f.get("table_count"))
        f.return_if_false(call_internal(f, "rebuild_table", I1, [PTR, I64], arena, slots), ERR_OOM)
        with b.if_then(b.icmp_signed(">", f.get("memo_width"), c64(0))):
            rebuilt = call_internal(f, "memo_rebuild", I1, [PTR, I64, I64], arena,
                                    b.add(f.get("memo_mask"), c64(1)), c64(0))
            f.return_if_false(rebuilt, ERR_OOM)
        with b.if_then(b.icmp_signed(">", f.get("track_width"), c64(0))):
            rebuilt = call_internal(f, "track_rebuild", I1, [PTR, I64], arena, b.add(f.get("track_mask"), c64(1)))
            f.return_if_false(rebuilt, ERR_OOM)
        b.ret(c64(0))

    @staticmethod
    def _grow_instead(f: FunctionBuilder) -> None:
        """When the last collection kept nearly all it found (a program building one large term: a numeral,
        a list), the next would copy all that again, into pages never touched: grow the spaces instead, once
        (realloc keeps the nodes where they are), then collect as usual. The spaces stay within
        LIVE_FRACTION^2 times the nodes that collection kept; with no room to grow, it collects."""
        b = f.b
        with b.if_then(b.icmp_signed("!=", f.get("grow_next"), c64(0))):
            f.put("grow_next", c64(0))
            wanted = b.mul(b.add(f.get("cap"), f.args[1]), c64(LIVE_FRACTION))
            grown = call_internal(f, "grow_spaces", I1, [PTR, I64], f.arena, wanted)
            f.return_if(b.and_(grown, b.icmp_signed("<=", b.add(f.get("top"), f.args[1]), f.get("cap"))), c64(0))

    @staticmethod
    def _forward_parents(f: FunctionBuilder, top: ir.Value) -> None:
        """After a copy: each parent word in the new space names its parent's new id, or SHARED_PARENT when
        the parent was not copied (parent words do not keep nodes alive)."""
        b = f.b
        old = f.get("spare")
        with heap_nodes(f, lambda: f.get("heap"), lambda: top) as (at, head):
            slot = parent_at(f, at)
            parent = f.word(slot, 0)
            with b.if_then(b.icmp_signed(">=", parent, c64(0))):
                moved = b.icmp_signed("==", f.load_at(old, parent, "heap"), c64(FORWARDED))
                new_id = f.load_at(old, b.add(parent, c64(1)), "heap")
                f.set_word(slot, 0, b.select(moved, new_id, c64(SHARED_PARENT)))

    def _grow_spaces(self) -> None:
        """grow_spaces(arena, words): both spaces at least that large (doubling); false when out of memory."""
        f = self.new("grow_spaces", I1, [PTR, I64])
        b = f.b
        want = f.args[1]
        cap = f.get("cap")
        doubled = b.mul(cap, c64(2))
        new_cap = b.select(b.icmp_signed("<", doubled, want), want, doubled)
        old_bytes = b.mul(b.add(cap, f.get("spare_cap")), c64(8))
        new_bytes = b.mul(new_cap, c64(8))
        f.return_if(b.not_(call(f, "charge", f.arena, old_bytes, b.mul(new_bytes, c64(2)))), FALSE)
        # Both reallocated: the spare space's contents do not matter, but its pages already in memory do (a
        # fresh block's first touch is a page fault, ~1.5 us here; the export's order lands there too).
        heap = call(f, "realloc", f.get("heap"), new_bytes)
        spare = call(f, "realloc", f.get("spare"), new_bytes)
        for name, block in (("heap", heap), ("spare", spare)):
            with b.if_then(b.icmp_unsigned("!=", block, NULL)):
                f.put(name, block)  # realloc kept the block; only its capacity may stay as it was
        failed = b.or_(b.icmp_unsigned("==", heap, NULL), b.icmp_unsigned("==", spare, NULL))
        with b.if_then(failed, likely=False):
            call(f, "charge", f.arena, b.mul(new_bytes, c64(2)), old_bytes)
            b.ret(FALSE)
        f.put("cap", new_cap)
        f.put("spare_cap", new_cap)
        b.ret(TRUE)

    def _grow_roots(self) -> None:
        f = self.new("farm_grow_roots", I1, [PTR, I64], internal=False)
        f.b.ret(self.grow(f, "roots", "roots_cap", f.args[1]))

    # ---- the memo: (op, arguments) -> normal form, or IN_PROGRESS while the call runs ----

    def _memo_entry(self, f: FunctionBuilder, slot: ir.Value) -> ir.Value:
        return f.b.mul(slot, f.get("memo_width"))

    def _reindex(self, f: FunctionBuilder, kind: str, slots: ir.Value,
                 wanted: Callable[[ir.Value, ir.Value], ir.Value] | None = None,
                 kept: Callable[[ir.Value, ir.Value], None] | None = None) -> None:
        """Re-index the memo's or the tracked calls' entries (kind) into a fresh table of `slots`, keeping
        those `wanted(old table, entry)` selects (all without it) and calling `kept` on each; returns false
        from the function when out of memory (the old table stays). Bumps the table's epoch."""
        b = f.b
        width = f.get(f"{kind}_width")
        old, old_slots = f.get(kind), b.add(f.get(f"{kind}_mask"), c64(1))
        old_bytes, new_bytes = b.mul(b.mul(old_slots, width), c64(8)), b.mul(b.mul(slots, width), c64(8))
        f.return_if(b.not_(call(f, "charge", f.arena, old_bytes, new_bytes)), FALSE)
        table = call(f, "calloc", b.mul(slots, width), c64(8))
        with b.if_then(b.icmp_unsigned("==", table, NULL), likely=False):
            call(f, "charge", f.arena, new_bytes, old_bytes)
            b.ret(FALSE)
        mask = b.sub(slots, c64(1))
        with f.loop(c64(0), old_slots) as slot:
            entry = b.mul(slot, width)
            tag = f.load_at(old, entry)
            keep = b.icmp_signed("!=", tag, c64(0))
            with b.if_then(b.and_(keep, wanted(old, entry)) if wanted else keep):
                h = self.hash_of(f, tag, f.arity_of(tag), f.elem(old, b.add(entry, c64(ARGS_AT[kind]))))
                free = self.probe(f, mask, h, lambda idx: b.icmp_signed(
                    "!=", f.load_at(table, b.mul(idx, width)), c64(0)), lambda idx: None)
                with f.loop(c64(0), width) as k:
                    f.store_at(table, b.add(b.mul(free, width), k), f.load_at(old, b.add(entry, k)))
                if kept:
                    kept(old, entry)
        call(f, "free", old)
        f.put(kind, table)
        f.put(f"{kind}_mask", mask)
        f.bump(f"{kind}_epoch", 1)

    def _memo_rebuild(self) -> None:
        """memo_rebuild(arena, slots, keep): re-index the entries into a table of `slots`: keep 0 all, 1 the
        finished ones, 2 those in progress. False when out of memory (the old table stays)."""
        f = self.new("memo_rebuild", I1, [PTR, I64, I64])
        b = f.b
        _, slots, keep = f.args
        count, done = f.var(c64(0)), f.var(c64(0))

        def running(old: ir.Value, entry: ir.Value) -> ir.Value:
            return b.icmp_signed("==", f.load_at(old, b.add(entry, c64(1))), c64(IN_PROGRESS))

        def wanted(old: ir.Value, entry: ir.Value) -> ir.Value:
            now = running(old, entry)
            return b.select(b.icmp_signed("==", keep, c64(1)), b.not_(now),
                            b.select(b.icmp_signed("==", keep, c64(2)), now, TRUE))

        def kept(old: ir.Value, entry: ir.Value) -> None:
            b.store(b.add(f.read(count), c64(1)), count)
            b.store(b.add(f.read(done), b.zext(b.not_(running(old, entry)), I64)), done)

        self._reindex(f, "memo", slots, wanted, kept)
        f.put("memo_count", f.read(count))
        f.put("memo_done", f.read(done))
        b.ret(TRUE)

    def _entry_find(self) -> None:
        """entry_find(table, mask, width, args at, tag, args): in a table of `width`-cell entries (a tag, then
        at `args at` the arguments: the memo and the tracked calls), the slot holding the key, or -1 - the
        free slot where it would go."""
        f = self.new("entry_find", I64, [PTR, I64, I64, I64, I64, PTR])
        b = f.b
        table, mask, width, args_at, tag, args = f.args
        arity = f.arity_of(tag)
        h = self.hash_of(f, tag, arity, args)

        def matches(idx: ir.Value) -> None:
            entry = b.mul(idx, width)
            with b.if_then(b.icmp_signed("==", f.load_at(table, entry), tag)):
                same = f.var(TRUE, I1)
                with f.loop(c64(0), arity) as j:
                    equal = b.icmp_signed("==", f.load_at(table, b.add(b.add(entry, args_at), j)),
                                          f.load_at(args, j, "any"))
                    b.store(b.and_(f.read(same, I1), equal), same)
                f.return_if(f.read(same, I1), idx)

        free = self.probe(f, mask, h, lambda idx: b.icmp_signed("!=", f.load_at(table, b.mul(idx, width)), c64(0)),
                          matches)
        b.ret(b.sub(c64(-1), free))

    def find(self, f: FunctionBuilder, kind: str, tag: ir.Value, args: ir.Value) -> ir.Value:
        """The slot of (tag, args) in the memo or the tracked calls (kind), or -1 - a free slot."""
        table, mask, width = f.get(kind), f.get(f"{kind}_mask"), f.get(f"{kind}_width")
        return call_internal(f, "entry_find", I64, [PTR, I64, I64, I64, I64, PTR], table, mask, width,
                             c64(ARGS_AT[kind]), tag, args)

    def _memo_enter(self) -> None:
        """farm_memo_enter(arena, op, arity, args): the remembered normal form; ERR_CYCLE if this call is in
        progress; or NO_MATCH after claiming an entry (none when the memo is full of calls in progress)."""
        f = self.new("farm_memo_enter", I64, [PTR, I64, I64, PTR], internal=False)
        b = f.b
        arena, op, arity, args = f.args
        tag = header(f, b.add(op, c64(1)), arity)
        found = self.find(f, "memo", tag, args)
        with b.if_then(b.icmp_signed(">=", found, c64(0))):
            value = f.load_at(f.get("memo"), b.add(self._memo_entry(f, found), c64(1)))
            b.ret(b.select(b.icmp_signed("==", value, c64(IN_PROGRESS)), c64(ERR_CYCLE), value))
        with b.if_then(b.icmp_signed(">=", f.get("memo_count"), c64(MAX_MEMO_ENTRIES)), likely=False):
            # Full: drop the finished entries, if any (when all are in progress the call goes unremembered).
            with b.if_then(b.icmp_signed(">", f.get("memo_done"), c64(0))):
                slots = b.add(f.get("memo_mask"), c64(1))
                dropped = call_internal(f, "memo_rebuild", I1, [PTR, I64, I64], arena, slots, c64(2))
                f.return_if_false(dropped, ERR_OOM)
            f.return_if(b.icmp_signed(">=", f.get("memo_count"), c64(MAX_MEMO_ENTRIES)), c64(NO_MATCH))
        slots = b.add(f.get("memo_mask"), c64(1))
        with b.if_then(b.icmp_signed(">", b.mul(b.add(f.get("memo_count"), c64(1)), c64(2)), slots), likely=False):
            grown = call_internal(f, "memo_rebuild", I1, [PTR, I64, I64], arena, b.mul(slots, c64(2)), c64(0))
            f.return_if_false(grown, ERR_OOM)
        free = b.sub(c64(-1), self.find(f, "memo", tag, args))
        memo, entry = f.get("memo"), self._memo_entry(f, free)
        f.store_at(memo, entry, tag)
        f.store_at(memo, b.add(entry, c64(1)), c64(IN_PROGRESS))
        with f.loop(c64(0), arity) as j:
            f.store_at(memo, b.add(b.add(entry, c64(2)), j), f.load_at(args, j, "any"))
        f.bump("memo_count", 1)
        b.ret(c64(NO_MATCH))

    def _memo_leave(self) -> None:
        """farm_memo_leave(arena, op, arity, args, nf): remember the call's normal form (if it was claimed)."""
        f = self.new("farm_memo_leave", VOID, [PTR, I64, I64, PTR, I64], internal=False)
        b = f.b
        arena, op, arity, args, value = f.args
        found = self.find(f, "memo", header(f, b.add(op, c64(1)), arity), args)
        with b.if_then(b.icmp_signed(">=", found, c64(0))):
            f.store_at(f.get("memo"), b.add(self._memo_entry(f, found), c64(1)), value)
            f.bump("memo_done", 1)
        b.ret_void()
    # ---- the tracked calls in progress: (op, arguments), to catch a loop ----

    def _track_rebuild(self) -> None:
        """track_rebuild(arena, slots): re-index the tracked calls into a table of `slots` (after a
        collection moved their arguments, or to grow); false when out of memory (the old table stays)."""
        f = self.new("track_rebuild", I1, [PTR, I64])
        self._reindex(f, "track", f.args[1])
        f.b.ret(TRUE)

    def _track_enter(self) -> None:
        """farm_track_enter(arena, op, arity, args): ERR_CYCLE if this call is in progress, else 0 once it is
        recorded (ERR_OOM if it cannot be)."""
        f = self.new("farm_track_enter", I64, [PTR, I64, I64, PTR], internal=False)
        b = f.b
        arena, op, arity, args = f.args
        tag = header(f, b.add(op, c64(1)), arity)
        f.return_if(b.icmp_signed(">=", self.find(f, "track", tag, args), c64(0)), c64(ERR_CYCLE))
        slots = b.add(f.get("track_mask"), c64(1))
        with b.if_then(b.not_(track_room(f, f.get("track_count"), slots)), likely=False):
            grown = call_internal(f, "track_rebuild", I1, [PTR, I64], arena, b.mul(slots, c64(2)))
            f.return_if_false(grown, ERR_OOM)
        free = b.sub(c64(-1), self.find(f, "track", tag, args))
        table, entry = f.get("track"), b.mul(free, f.get("track_width"))
        f.store_at(table, entry, tag)
        with f.loop(c64(0), arity) as j:
            f.store_at(table, b.add(b.add(entry, c64(1)), j), f.load_at(args, j, "any"))
        f.bump("track_count", 1)
        b.ret(c64(0))

    def _track_leave(self) -> None:
        """farm_track_leave(arena, op, arity, args): forget the call, shifting back the entries probed past
        its slot (linear probing without tombstones)."""
        f = self.new("farm_track_leave", VOID, [PTR, I64, I64, PTR], internal=False)
        b = f.b
        _, op, arity, args = f.args
        found = self.find(f, "track", header(f, b.add(op, c64(1)), arity), args)
        with b.if_then(b.icmp_signed("<", found, c64(0))):
            b.ret_void()
        table, mask, width = f.get("track"), f.get("track_mask"), f.get("track_width")
        hole, probe = f.var(found), f.var(b.and_(b.add(found, c64(1)), mask))
        head, body, done = f.block("shift"), f.block("shift_entry"), f.block("shifted")
        b.branch(head)
        b.position_at_end(head)
        j = f.read(probe)
        entry = b.mul(j, width)
        tag = f.load_at(table, entry)
        b.cbranch(b.icmp_signed("!=", tag, c64(0)), body, done)
        b.position_at_end(body)
        home = b.and_(self.hash_of(f, tag, f.arity_of(tag), f.elem(table, b.add(entry, c64(1)))), mask)
        i = f.read(hole)
        # The entry may fill the hole if the hole lies on its probe path (from home to j, cyclically).
        with b.if_then(b.icmp_unsigned(">=", b.and_(b.sub(j, home), mask), b.and_(b.sub(j, i), mask))):
            with f.loop(c64(0), width) as k:
                f.store_at(table, b.add(b.mul(i, width), k), f.load_at(table, b.add(entry, k)))
            b.store(j, hole)
        b.store(b.and_(b.add(j, c64(1)), mask), probe)
        b.branch(head)
        b.position_at_end(done)
        with f.loop(c64(0), width) as k:
            f.store_at(table, b.add(b.mul(f.read(hole), width), k), c64(0))
        f.bump("track_count", -1)
        b.ret_void()

    # ---- rewriting a term graph given as columns ----

    def _check_rows(self) -> None:
        """check_rows(arena, rows, ops, arities, values, kids, kids length): every row well formed (an
        operator id, the ruleset's arity for its operators, children that are earlier rows)."""
        f = self.new("check_rows", I1, [PTR, I64, PTR, PTR, PTR, PTR, I64])
        b = f.b
        _, rows, ops, arities, values, kids, n_kids = f.args
        op_count = call(f, "farm_op_count")
        with f.loop(c64(0), rows) as i:
            op = f.load_at(ops, i)
            f.return_if(b.or_(b.icmp_signed("<", op, c64(LIT_OP)), b.icmp_signed(">", op, c64(2**31 - 1))), FALSE)
            with b.if_then(b.icmp_signed("!=", op, c64(LIT_OP))):
                arity, offset = f.load_at(arities, i), f.load_at(values, i)
                bad = b.or_(b.icmp_signed("<", arity, c64(0)), b.icmp_signed(">", arity, c64(2**31 - 1)))
                bad = b.or_(bad, b.or_(b.icmp_signed("<", offset, c64(0)),
                                       b.icmp_signed(">", offset, b.sub(n_kids, arity))))
                f.return_if(bad, FALSE)
                with b.if_then(b.icmp_signed("<", op, op_count)):
                    f.return_if(b.icmp_signed("!=", arity, call(f, "farm_op_arity", op)), FALSE)
                with f.loop(c64(0), arity) as j:
                    kid = f.load_at(kids, b.add(offset, j))
                    f.return_if(b.or_(b.icmp_signed("<", kid, c64(0)), b.icmp_signed(">=", kid, i)), FALSE)
        b.ret(TRUE)

    def _normalize_row(self) -> None:
        """normalize_row(arena, row, ops, arities, values, kids): an input row's normal form, children first
        on the work stack (terms nest a million deep): a literal is interned, an application's operator
        called on its children's normal forms (farm_call: the rules, or a constructor node)."""
        f = self.new("normalize_row", I64, [PTR, I64, PTR, PTR, PTR, PTR])
        b = f.b
        arena, row, ops, arities, values, kids = f.args
        known = f.load_at(f.get("nf"), row)
        f.return_if(b.icmp_signed(">=", known, c64(0)), known)
        sp = f.var(c64(0))

        def finish(r: ir.Value, value: ir.Value) -> None:
            f.return_if_error(value)
            f.store_at(f.get("nf"), r, value)
            b.store(b.sub(f.read(sp), c64(1)), sp)

        self.push_frame(f, sp, row)
        head, step, done = f.block("rows"), f.block("row"), f.block("rows_done")
        b.branch(head)
        b.position_at_end(head)
        b.cbranch(b.icmp_signed(">", f.read(sp), c64(0)), step, done)
        b.position_at_end(step)
        frame = b.mul(b.sub(f.read(sp), c64(1)), c64(2))
        r = f.load_at(f.get("work"), frame)
        op = f.load_at(ops, r)
        literal, app = f.block("literal"), f.block("application")
        b.cbranch(b.icmp_signed("==", op, c64(LIT_OP)), literal, app)
        b.position_at_end(literal)
        finish(r, call(f, "farm_lit", arena, f.load_at(values, r)))
        b.branch(head)
        b.position_at_end(app)
        arity, offset = f.load_at(arities, r), f.load_at(values, r)
        with f.loop(f.load_at(f.get("work"), b.add(frame, c64(1))), arity) as k:
            kid = f.load_at(kids, b.add(offset, k))
            with b.if_then(b.icmp_signed("<", f.load_at(f.get("nf"), kid), c64(0))):
                f.store_at(f.get("work"), b.add(frame, c64(1)), b.add(k, c64(1)))
                self.push_frame(f, sp, kid)
                b.branch(head)
        base = f.get("rsp")
        f.return_if_false(self.grow(f, "roots", "roots_cap", b.add(base, arity)), ERR_OOM)
        with f.loop(c64(0), arity) as j:
            f.set_root(b.add(base, j), f.load_at(f.get("nf"), f.load_at(kids, b.add(offset, j))))
        f.put("rsp", b.add(base, arity))
        value = call(f, "farm_call", arena, op, arity, f.root_ptr(base))
        f.put("rsp", base)
        finish(r, value)
        b.branch(head)
        b.position_at_end(done)
        b.ret(f.load_at(f.get("nf"), row))

    def push_frame(self, f: FunctionBuilder, sp: ir.Value, item: ir.Value) -> None:
        """Push the frame (item, 0) on the work stack, whose frames are (an item, its next child); returns
        ERR_OOM from the function when the stack cannot grow."""
        b = f.b
        at = b.mul(f.read(sp), c64(2))
        f.return_if_false(self.grow(f, "work", "work_cap", b.add(at, c64(2))), ERR_OOM)
        f.store_at(f.get("work"), at, item)
        f.store_at(f.get("work"), b.add(at, c64(1)), c64(0))
        b.store(b.add(f.read(sp), c64(1)), sp)

    def _rewrite(self) -> None:
        """farm_rewrite: check the rows, then normalise each root row; out[i] = its normal form's id or an
        error, info[2i..] = steps, last rule fired. Returns 0, or ERR_INPUT / ERR_OOM for the whole call."""
        f = self.export("farm_rewrite")
        b = f.b
        arena, rows, ops, arities, values, kids, n_kids, n_roots, root_rows, out, info, fuel = f.args
        counts = b.or_(b.icmp_signed("<", rows, c64(0)), b.icmp_signed("<", n_roots, c64(0)))
        f.return_if(b.or_(counts, b.icmp_signed("<", n_kids, c64(0))), c64(ERR_INPUT))
        well_formed = call_internal(f, "check_rows", I1, [PTR, I64, PTR, PTR, PTR, PTR, I64], arena, rows, ops,
                                    arities, values, kids, n_kids)
        f.return_if_false(well_formed, ERR_INPUT)
        with f.loop(c64(0), n_roots) as i:
            root = f.load_at(root_rows, i)
            f.return_if(b.or_(b.icmp_signed("<", root, c64(0)), b.icmp_signed(">=", root, rows)), c64(ERR_INPUT))
        # A farm_mark since the last call left marks in parent words: put them right before any interning.
        f.return_if_false(call_internal(f, "unmark", I1, [PTR], arena), ERR_OOM)
        here = b.ptrtoint(f.buffer(1), I64)
        stack = f.get("stack_bytes")
        f.put("stack_floor", b.select(b.icmp_signed(">", stack, c64(0)), b.sub(here, stack), c64(0)))
        f.put("stack_top", here)
        nf_bytes = b.mul(rows, c64(8))
        f.return_if_false(call(f, "charge", arena, c64(0), nf_bytes), ERR_OOM)
        nf = call(f, "malloc", b.add(nf_bytes, c64(8)))
        f.return_if(b.icmp_unsigned("==", nf, NULL), c64(ERR_OOM))
        with f.loop(c64(0), rows) as i:
            f.store_at(nf, i, c64(-1))
        for name, value in (("nf", nf), ("n_rows", rows), ("out", out), ("n_out", c64(0)), ("fuel", fuel)):
            f.put(name, value)
        exhausted = f.var(FALSE, I1)
        with f.loop(c64(0), n_roots) as i:
            for name, value in (("steps", 0), ("last_rule", -1), ("depth", 1), ("calls", 0), ("rsp", 0)):
                f.put(name, c64(value))
            # After running out of memory the arena may be half rebuilt: no root runs on it any more.
            result = f.var(c64(ERR_OOM))
            with b.if_then(b.not_(f.read(exhausted, I1))):
                b.store(call_internal(f, "normalize_row", I64, [PTR, I64, PTR, PTR, PTR, PTR], arena,
                                      f.load_at(root_rows, i), ops, arities, values, kids), result)
            result = f.read(result)
            b.store(b.or_(f.read(exhausted, I1), b.icmp_signed("==", result, c64(ERR_OOM))), exhausted)
            f.store_at(out, i, result)
            f.put("n_out", b.add(i, c64(1)))
            f.store_at(info, b.mul(i, c64(2)), f.get("steps"))
            f.store_at(info, b.add(b.mul(i, c64(2)), c64(1)), f.get("last_rule"))
            with b.if_then(b.icmp_signed("<", result, c64(0))):
                self._abandon(f)
        call(f, "free", f.get("nf"))
        call(f, "charge", arena, nf_bytes, c64(0))
        for name in ("n_rows", "n_out", "rsp", "stack_top"):
            f.put(name, c64(0))
        f.put("nf", NULL)
        b.ret(c64(0))

    def _abandon(self, f: FunctionBuilder) -> None:
        """The calls a failed root left in progress never finish: forget them (finished memo entries stay)."""
        b = f.b
        with b.if_then(b.icmp_signed(">", f.get("memo_width"), c64(0))):
            call_internal(f, "memo_rebuild", I1, [PTR, I64, I64], f.arena, b.add(f.get("memo_mask"), c64(1)), c64(1))
        with b.if_then(b.icmp_signed(">", f.get("track_width"), c64(0))):
            cells = b.mul(b.add(f.get("track_mask"), c64(1)), f.get("track_width"))
            track = f.get("track")
            with f.loop(c64(0), cells) as i:
                f.store_at(track, i, c64(0))
            f.put("track_count", c64(0))
            f.bump("track_epoch", 1)

    # ---- exporting normal forms ----

    def _walk(self) -> None:
        """walk(arena, n, roots): number the nodes the non-negative roots reach that are not numbered yet,
        children first (post-order), on from `marked`. A node's number goes into its own parent word
        (MARK_BASE - number), so there is no map to clear (clearing one as large as the space, most of it
        pages never touched, cost more than the walk), and its id into the spare space at that number: the
        spare space is free between rewrites, at least twice as large as the nodes can be many, and its pages
        were touched by the collections already (a new block's were not)."""
        f = self.new("walk", VOID, [PTR, I64, PTR])
        b = f.b
        _, n, roots = f.args
        with f.loop(c64(0), n) as i:
            root = f.load_at(roots, i)
            # An error code is not an id: the mark is read only once the root is one (the second `with`).
            with b.if_then(b.icmp_signed(">=", root, c64(0))), b.if_then(b.not_(is_marked(f, root))):
                self._reversing_walk(f, root)
        b.ret_void()

    def _reversing_walk(self, f: FunctionBuilder, root: ir.Value) -> None:
        """Number the unnumbered nodes under `root` without a stack (Deutsch-Schorr-Waite pointer reversal):
        terms nest a million deep, and a stack as deep as the term was the export's largest block of fresh
        pages. Going down into child k of a node, that child's slot holds the node's own way back up and the
        node's parent word holds k (the word is free: it gets the node's mark); going up puts both back. No
        node under way is ever met as a child (a term graph has no cycles), and nothing can fail half way."""
        b = f.b
        cur, back, k = f.var(root), f.var(c64(NO_NODE)), f.var(c64(0))
        scan, check, skip, down, finish, up, done = (f.block(name) for name in (
            "walk_scan", "walk_check", "walk_skip", "walk_down", "walk_number", "walk_up", "walked"))
        b.branch(scan)
        b.position_at_end(scan)  # the next child of `cur` from k that is not numbered yet, if any
        node, at = f.read(cur), f.read(k)
        node_head = f.word(node, 0)
        arity = b.select(b.icmp_signed("==", node_head, c64(LIT_HEADER)), c64(0), f.arity_of(node_head))
        b.cbranch(b.icmp_signed("<", at, arity), check, finish)
        b.position_at_end(check)
        kid = f.content(node, at)
        b.cbranch(is_marked(f, kid), skip, down)
        b.position_at_end(skip)
        b.store(b.add(at, c64(1)), k)
        b.branch(scan)
        b.position_at_end(down)
        f.set_word(node, b.add(at, c64(CONTENT_AT)), f.read(back))
        f.set_word(parent_at(f, node), 0, at)
        b.store(node, back)
        b.store(kid, cur)
        b.store(c64(0), k)
        b.branch(scan)
        b.position_at_end(finish)  # every child numbered: number the node
        number = f.get("marked")
        f.store_at(f.get("spare"), number, node, "heap")
        f.set_word(parent_at(f, node), 0, b.sub(c64(MARK_BASE), number))
        f.put("marked", b.add(number, c64(1)))
        f.put("marked_kids", b.add(f.get("marked_kids"), arity))
        parent = f.read(back)
        b.cbranch(b.icmp_signed("==", parent, c64(NO_NODE)), done, up)
        b.position_at_end(up)
        slot = f.word(parent_at(f, parent), 0)
        b.store(f.content(parent, slot), back)
        f.set_word(parent, b.add(slot, c64(CONTENT_AT)), node)
        b.store(parent, cur)
        b.store(b.add(slot, c64(1)), k)
        b.branch(scan)
        b.position_at_end(done)

    def _mark(self) -> None:
        """farm_mark(arena, n, roots, sizes): number the nodes the roots reach (walk); sizes[0] = nodes,
        sizes[1] = their children, to size the export. 0 (the walk needs no memory: it cannot fail)."""
        f = self.export("farm_mark")
        arena, n, roots, sizes = f.args
        call_internal(f, "walk", VOID, [PTR, I64, PTR], arena, n, roots)
        f.store_at(sizes, c64(0), f.get("marked"))
        f.store_at(sizes, c64(1), f.get("marked_kids"))
        f.b.ret(c64(0))

    def _export(self) -> None:
        """farm_export(arena, n, roots, out_roots, ops, values, arities, kids): the numbered nodes (spare space)
        as columns (the TermGraph layout: children first, numbered from 0), and the roots mapped; the node
        count. After farm_mark with the same roots the walk finds every root numbered and does nothing;
        without it, it numbers them here."""
        f = self.export("farm_export")
        b = f.b
        arena, n, roots, out_roots, ops, values, arities, kids = f.args
        call_internal(f, "walk", VOID, [PTR, I64, PTR], arena, n, roots)
        written = f.var(c64(0))
        with f.loop(c64(0), f.get("marked")) as i:
            node = f.load_at(f.get("spare"), i, "heap")
            node_head = f.word(node, 0)
            is_lit = b.icmp_signed("==", node_head, c64(LIT_HEADER))
            arity = b.select(is_lit, c64(0), f.arity_of(node_head))
            start = f.read(written)
            f.store_at(ops, i, f.op_of(node_head))
            f.store_at(arities, i, arity)
            f.store_at(values, i, b.select(is_lit, f.content(node, 0), start))
            with f.loop(c64(0), arity) as j:
                f.store_at(kids, b.add(start, j), number_of(f, f.content(node, j)))
            b.store(b.add(start, arity), written)
        with f.loop(c64(0), n) as i:
            mapped = f.var(f.load_at(roots, i))
            with b.if_then(b.icmp_signed(">=", f.read(mapped), c64(0))):
                b.store(number_of(f, f.read(mapped)), mapped)
            f.store_at(out_roots, i, f.read(mapped))
        b.ret(f.get("marked"))

    def _unmark(self) -> None:
        """unmark(arena): after farm_mark the numbered nodes' parent words hold marks, so their registered
        parents are found through nothing. Set those words to SHARED_PARENT and rebuild the table, which files
        the parents that were registered there (every node is again its last child's registered parent or in
        the table); other nodes keep theirs. False when out of memory (the marks stay, to be undone again)."""
        f = self.new("unmark", I1, [PTR])
        b = f.b
        marked = f.get("marked")
        f.return_if(b.icmp_signed("==", marked, c64(0)), TRUE)
        with f.loop(c64(0), marked) as i:
            node = f.load_at(f.get("spare"), i, "heap")
            f.set_word(parent_at(f, node), 0, c64(SHARED_PARENT))
        # The table gains at most one node per mark: the registered parent of the marked node.
        slots = table_slots(f, b.add(f.get("table_count"), marked))
        f.return_if(b.not_(call_internal(f, "rebuild_table", I1, [PTR, I64], f.arena, slots)), FALSE)
        f.put("marked", c64(0))
        f.put("marked_kids", c64(0))
        b.ret(TRUE)

    # ---- the arena ----

    BLOCKS = ("heap", "spare", "table", "roots", "work", "memo", "track", "counters", "rule_base", "nf")
    WRITTEN_FIRST = frozenset({"heap", "spare", "roots", "work", "rule_base"})

    def _arena_free(self) -> None:
        f = self.export("farm_arena_free")
        b = f.b
        with b.if_then(b.icmp_unsigned("!=", f.arena, NULL)):
            for name in self.BLOCKS:
                call(f, "free", f.get(name))
            call(f, "free", f.arena)
        b.ret_void()

    def _arena_new(self) -> None:
        f = self.export("farm_arena_new")
        b = f.b
        arena = call(f, "calloc", c64(1), c64(8 * len(ARENA_FIELDS)))
        f.arena = arena
        f.return_if(b.icmp_unsigned("==", arena, NULL), NULL)
        width, track_width = call(f, "farm_memo_width"), call(f, "farm_track_width")
        memo_slots = b.select(b.icmp_signed(">", width, c64(0)), c64(INITIAL_MEMO), c64(1))
        track_slots = b.select(b.icmp_signed(">", track_width, c64(0)), c64(INITIAL_MEMO), c64(1))
        counters = b.add(call(f, "farm_rule_count"), c64(1))
        op_count = call(f, "farm_op_count")
        sizes = {"rule_base": op_count, "heap": c64(INITIAL_WORDS), "spare": c64(INITIAL_WORDS),
                 "table": c64(MIN_TABLE), "roots": c64(INITIAL_CELLS), "work": c64(INITIAL_CELLS),
                 "memo": b.mul(memo_slots, width),
                 "track": b.mul(track_slots, track_width),
                 "counters": counters}
        missing = FALSE
        held = c64(0)
        for name, cells in sizes.items():
            # Blocks every word of which is written before it is read are not cleared: clearing a block
            # that glibc takes from memory it had before touches each page (~250 page faults on a first call).
            block = call(f, "malloc", b.mul(b.add(cells, c64(1)), c64(8))) if name in self.WRITTEN_FIRST \
                else call(f, "calloc", b.add(cells, c64(1)), c64(8))
            f.put(name, block)
            missing = b.or_(missing, b.icmp_unsigned("==", block, NULL))
            held = b.add(held, b.mul(cells, c64(8)))
        for name, value in (("cap", c64(INITIAL_WORDS)), ("spare_cap", c64(INITIAL_WORDS)),
                            ("table_mask", c64(MIN_TABLE - 1)), ("roots_cap", c64(INITIAL_CELLS)),
                            ("work_cap", c64(INITIAL_CELLS)), ("memo_mask", b.sub(memo_slots, c64(1))),
                            ("memo_width", width), ("track_mask", b.sub(track_slots, c64(1))),
                            ("track_width", track_width), ("last_rule", c64(-1)), ("limit", c64(NO_LIMIT)),
                            ("held", held)):
            f.put(name, value)
        with b.if_then(missing, likely=False):
            call(f, "farm_arena_free", arena)
            b.ret(NULL)
        rule_base = f.get("rule_base")
        with f.loop(c64(0), op_count) as op:
            f.store_at(rule_base, op, call(f, "farm_op_first_rule", op))
        b.ret(arena)

@contextmanager
def heap_nodes(f: FunctionBuilder, base: Callable[[], ir.Value], stop: Callable[[], ir.Value]) \
        -> Iterator[tuple[ir.Value, ir.Value]]:
    """for each node of a space, from id 0 while id < stop(): yields (id, header); `base` and `stop` are
    re-evaluated on every turn (the body may move or extend the space)."""
    b = f.b
    node = f.var(c64(0))
    head_block, body, done = f.block("nodes"), f.block("node"), f.block("nodes_done")
    b.branch(head_block)
    b.position_at_end(head_block)
    at = f.read(node)
    b.cbranch(b.icmp_signed("<", at, stop()), body, done)
    b.position_at_end(body)
    head = f.load_at(base(), at, "heap")
    yield at, head
    b.store(b.add(at, node_words(f, head)), node)
    b.branch(head_block)
    b.position_at_end(done)


def is_marked(f: FunctionBuilder, node: ir.Value) -> ir.Value:
    """Whether farm_mark numbered the node (its parent word holds a mark)."""
    return f.b.icmp_signed("<=", f.word(parent_at(f, node), 0), c64(MARK_BASE))


def number_of(f: FunctionBuilder, node: ir.Value) -> ir.Value:
    """A numbered node's number, from the mark in its parent word."""
    return f.b.sub(c64(MARK_BASE), f.word(parent_at(f, node), 0))


def table_slots(f: FunctionBuilder, entries: ir.Value) -> ir.Value:
    """The hash-consing table's size for `entries` nodes: a power of two, at least MIN_TABLE, at most half
    full."""
    b = f.b
    slots = f.var(c64(MIN_TABLE))
    wanted = b.mul(entries, c64(2))
    with f.loop(c64(0), c64(64)), b.if_then(b.icmp_signed("<", f.read(slots), wanted)):
        b.store(b.mul(f.read(slots), c64(2)), slots)
    return f.read(slots)


def call_internal(f: FunctionBuilder, name: str, ret: ir.Type, args: list[ir.Type], *values: ir.Value) -> ir.Value:
    """A call to a function of the runtime module itself (defined or declared in this module)."""
    return f.b.call(declare(f.module, name, ir.FunctionType(ret, args)), list(values))
