"""The runtime module's common ground: the node layout, the constants of the heap and its tables, and the
helpers every part of the runtime (farm/compiler/codegen/runtime.py and its parts) builds with."""


from collections.abc import Callable, Iterator
from contextlib import contextmanager

from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import (
    ERR_OOM,
    LIT_OP,
    MARK_BASE,
    PARENT_AT,
)
from farm.compiler.codegen.irbuild import (
    I1,
    I32,
    I64,
    PTR,
    VOID,
    FunctionBuilder,
    c64,
    declare,
    export_type,
)

# The runtime defines intern<n> (farm/compiler/codegen/intern.py) up to this arity, for code compiled without
# optimisation, which calls it rather than define its own in each module (a fifth of arith's tier-0 code).
SHARED_INTERN_ARITY = 4
# Functions one module calls in another (runtime <-> rules), besides the exports of abi.EXPORTS.
RUNTIME_CALLS: dict[str, ir.FunctionType] = {
    "malloc": ir.FunctionType(PTR, [I64]), "calloc": ir.FunctionType(PTR, [I64, I64]),
    "realloc": ir.FunctionType(PTR, [PTR, I64]), "free": ir.FunctionType(VOID, [PTR]),
    "madvise": ir.FunctionType(I32, [PTR, I64, I32]),
    "farm_intern": ir.FunctionType(I64, [PTR, I64, I64, PTR]),  # (arena, header, words, words*) -> id
    "farm_lit": ir.FunctionType(I64, [PTR, I64]),  # (arena, value) -> id of the literal
    "farm_grow_roots": ir.FunctionType(I1, [PTR, I64]),  # (arena, cells needed in all) -> grown?
    "farm_memo_enter": ir.FunctionType(I64, [PTR, I64, I64, PTR]),  # (arena, op, arity, args*)
    "farm_memo_leave": ir.FunctionType(VOID, [PTR, I64, I64, PTR, I64]),  # (arena, op, arity, args*, nf)
    "farm_track_enter": ir.FunctionType(I64, [PTR, I64, I64, PTR]),  # (arena, op, arity, args*)
    "farm_track_leave": ir.FunctionType(VOID, [PTR, I64, I64, PTR]),  # (arena, op, arity, args*)
    "farm_stack": ir.FunctionType(I64, [PTR, I64]),  # (arena, a frame's address) -> 0 or ERR_STACK
    "farm_call": ir.FunctionType(I64, [PTR, I64, I64, PTR]),  # (arena, op, arity, args*): in the rules
    "farm_op_arity": ir.FunctionType(I64, [I64]),  # a ruleset operator's arity: in the rules
    "farm_op_first_rule": ir.FunctionType(I64, [I64]),  # the index of its first rule: in the rules
    "farm_fire": ir.FunctionType(I64, [PTR, I64, I64]),  # (arena, op, k): count_firing; 0, or ERR_FUEL
    # farm_intern<n>(arena, header, kid 0 .. kid n-1): farm/compiler/codegen/intern.py's intern<n>, shared
    **{f"farm_intern{n}": ir.FunctionType(I64, [PTR, I64] + [I64] * n) for n in range(SHARED_INTERN_ARITY + 1)},
}
LIT_HEADER = LIT_OP & 0xFFFFFFFF
INITIAL_WORDS = 1 << 16  # each space; a space grows when the live nodes fill more than 1 / LIVE_FRACTION of it
LIVE_FRACTION = 8
# The pages of a space are populated in bulk ahead of the bump pointer (MADV_POPULATE_WRITE, Linux 5.14+): one
# call per chunk instead of one page fault per page. A chunk is as large as the populated part already (at least
# MIN_CHUNK words, at most MAX_CHUNK), so a small program populates little beyond what it uses.
PAGE_BYTES = 4096  # the chunks' start is rounded down to it (a larger page size: madvise refuses, pages fault)
MIN_CHUNK, MAX_CHUNK = 1 << 13, 1 << 17
MIN_EXPORT_CHUNK, MAX_EXPORT_CHUNK = 1 << 10, 1 << 16  # the same for an export's columns, in rows (children)
# farm_populate, on another thread, populates an export's columns from this row (the export populates the
# first ones itself on its way in), this many rows (children) of each column at a time, checking between
# steps whether the export is over. Factorial's export, 6 processes each, lead and step: 8,192 and 8,192 rows
# 4.1-5.7 ms; 32,768 and 8,192 4.7-6.0; 65,536 and 16,384 4.2-6.7; 65,536 and 32,768 4.5-5.6 (alone 5.7-7.3).
POPULATE_LEAD, POPULATE_STEP = 1 << 13, 1 << 13
MIN_STACK_CHUNK, MAX_STACK_CHUNK = 1 << 16, 1 << 20  # and for the native stack, in bytes
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
        return f.call(existing, list(args))
    fnty = RUNTIME_CALLS.get(name) or export_type(name)
    return f.call(declare(f.module, name, fnty), list(args))


def header(f: FunctionBuilder, op: ir.Value, arity: ir.Value) -> ir.Value:
    return f.b.or_(f.b.shl(arity, c64(32)), f.b.and_(op, c64(0xFFFFFFFF)))


def node_content(f: FunctionBuilder, head: ir.Value) -> ir.Value:
    """Words after the header that identify a node: a literal's value, an application's children."""
    return f.b.select(f.b.icmp_signed("==", head, c64(LIT_HEADER)), c64(1), f.arity_of(head))


def count_firing(f: FunctionBuilder, op: ir.Value, k: ir.Value) -> ir.Value:
    """Count a firing of operator `op`'s k-th rule (its first rule's index comes from the arena, so the rules' code
    does not change when other operators' rules are added or reordered) and the step; the steps taken."""
    b = f.b
    index = b.add(f.load_at(f.get("rule_base"), op), k)
    counters = f.get("counters")
    f.store_at(counters, index, b.add(f.load_at(counters, index), c64(1)))
    steps = f.bump("steps", 1)
    f.put("last_rule", index)
    return steps


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


class RuntimePart:
    """What the parts of the runtime module share: the module, function builders, and calls into the
    functions other parts define."""

    def __init__(self, module: ir.Module) -> None:
        self.m = module

    def new(self, name: str, ret: ir.Type, args: list[ir.Type], internal: bool = True) -> FunctionBuilder:
        return FunctionBuilder(self.m, name, ret, args, internal)

    def export(self, name: str) -> FunctionBuilder:
        fnty = export_type(name)
        return FunctionBuilder(self.m, name, fnty.return_type, list(fnty.args), internal=False)

    def grow(self, f: FunctionBuilder, field: str, cap: str, need: ir.Value) -> ir.Value:
        return call_internal(f, "grow_array", I1, [PTR, PTR, PTR, I64], f.arena, f._field(field), f._field(cap),
                             need)

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


def frontier(f: FunctionBuilder, ready: ir.Value, need: ir.Value, limit: ir.Value, smallest: int, largest: int) \
        -> ir.Value:
    """Where to move a populated frontier at `ready` that must reach `need`: a chunk ahead as large as the
    part populated already (from `smallest` to `largest`), or to `need` if further, at most `limit`."""
    b = f.b
    chunk = b.select(b.icmp_signed("<", ready, c64(smallest)), c64(smallest),
                     b.select(b.icmp_signed(">", ready, c64(largest)), c64(largest), ready))
    ahead = b.add(ready, chunk)
    wanted = b.select(b.icmp_signed(">", need, ahead), need, ahead)
    return b.select(b.icmp_signed(">", wanted, limit), limit, wanted)


def populate_ahead(f: FunctionBuilder, words: ir.Value, ready_field: str, need: ir.Value, limit_field: str) -> None:
    """Move the populated frontier `ready_field` of the i64 array at `words` to `need` or a chunk beyond (at most
    `limit_field`), populating the pages in between with one call (the runtime's `populate`)."""
    b = f.b
    ready = f.get(ready_field)
    new_ready = frontier(f, ready, need, f.get(limit_field), MIN_CHUNK, MAX_CHUNK)
    base = b.ptrtoint(words, I64)
    call_internal(f, "populate", VOID, [I64, I64], b.add(base, b.mul(ready, c64(8))),
                  b.add(base, b.mul(new_ready, c64(8))))
    f.put(ready_field, new_ready)


def push_roots(f: FunctionBuilder, values: list[ir.Value]) -> ir.Value:
    """Push `values` on the shadow stack (grown first when past `roots_cap`; ERR_OOM from the function when it
    cannot grow), where a collection finds and moves them; the frame's base. The caller pops: put("rsp", base)."""
    b = f.b
    base = f.get("rsp")
    need = f.plus(base, len(values))
    with b.if_then(b.icmp_signed(">", need, f.get("roots_cap")), likely=f.unlikely()):
        f.return_if_false(call(f, "farm_grow_roots", f.arena, need), ERR_OOM)
    for i, value in enumerate(values):
        f.set_root(f.plus(base, i), value)
    f.put("rsp", need)
    return base


def call_internal(f: FunctionBuilder, name: str, ret: ir.Type, args: list[ir.Type], *values: ir.Value) -> ir.Value:
    """A call to a function of the runtime module itself (defined or declared in this module)."""
    return f.call(declare(f.module, name, ir.FunctionType(ret, args)), list(values))
