"""The runtime module: the same for every ruleset (per target, CPU and -O level).

It owns the heap of hash-consed nodes and its copying collector, the hash-consing table, the memo of
memoised calls, the shadow stack whose node ids are the collector's roots, and the exported entry points:
rewriting a term graph given as columns (farm_rewrite) and exporting the normal forms (farm_mark,
farm_export). The rules' code (farm/compiler/codegen/operators.py) calls into it through RUNTIME_CALLS.

Node ids are word offsets into the current space. A collection copies the live nodes (Cheney) into the
spare space and swaps: every id changes, so whatever holds ids across a call that may allocate keeps them on
the shadow stack (or in the memo, the input rows' normal forms or the results), which the collector rewrites.
"""


from collections.abc import Callable

from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import (
    ABI_VERSION,
    ARENA_FIELDS,
    CONTENT_AT,
    ERR_FUEL,
    ERR_OOM,
    NO_LIMIT,
    NO_PARENT,
    PARENT_AT,
)
from farm.compiler.codegen.calls import CallTables
from farm.compiler.codegen.collector import Collector
from farm.compiler.codegen.columns import Columns
from farm.compiler.codegen.heap import (
    INITIAL_CELLS,
    INITIAL_MEMO,
    INITIAL_WORDS,
    K1,
    K2,
    LIT_HEADER,
    MIN_TABLE,
    SHARED_INTERN_ARITY,
    TAG_SHIFT,
    call,
    call_internal,
    count_firing,
    heap_nodes,
    node_content,
    parent_at,
    same_node,
)
from farm.compiler.codegen.intern import intern_function
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
)


class RuntimeModule(Collector, CallTables, Columns):
    """The whole runtime module: memory accounting, hash-consing and the arena here; the collector, the
    tables of calls and the column entry points in their parts."""

    def emit(self) -> None:
        for part in (self._charge, self._grow_array, self._hash, self._rebuild_table, self._intern, self._lit,
                     self._shared_interns, self._fire,
                     self._forward, self._collect, self._room, self._reach, self._populate, self._stack,
                     self._grow_spaces, self._grow_roots, self._memo_rebuild, self._entry_find, self._memo_enter,
                     self._memo_leave, self._track_rebuild, self._track_enter, self._track_leave,
                     self._check_rows, self._normalize_row, self._rewrite, self._walk, self._mark, self._export,
                     self._populate_ahead, self._unmark, self._arena_free, self._arena_new):
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
                # The nodes are filed at random slots: a large fresh table's pages would fault in one by one,
                # in random order (permutations: 944 faults). Populated in one call instead.
                start = b.ptrtoint(block, I64)
                call_internal(f, "populate", VOID, [I64, I64], start, b.add(start, new_bytes))
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
            f.return_if_error(call_internal(f, "room", I64, [PTR, I64], arena, size))
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

    def _shared_interns(self) -> None:
        """intern<n> for the rules' modules compiled without optimisation (heap.SHARED_INTERN_ARITY)."""
        for arity in range(SHARED_INTERN_ARITY + 1):
            intern_function(self.m, arity, inline=False, shared=True)

    def _fire(self) -> None:
        """farm_fire(arena, op, k): count_firing for the rules' modules compiled without optimisation; 0, or
        ERR_FUEL when the step takes the run past its fuel."""
        f = self.new("farm_fire", I64, [PTR, I64, I64], internal=False)
        steps = count_firing(f, f.args[1], f.args[2])
        f.b.ret(f.b.select(f.b.icmp_signed(">", steps, f.get("fuel")), c64(ERR_FUEL), c64(0)))

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
        missing: ir.Value = FALSE
        held: ir.Value = c64(0)
        for name, cells in sizes.items():
            # Blocks every word of which is written before it is read are not cleared: clearing a block
            # that glibc takes from memory it had before touches each page (~250 page faults on a first call).
            block = call(f, "malloc", b.mul(b.add(cells, c64(1)), c64(8))) if name in self.WRITTEN_FIRST \
                else call(f, "calloc", b.add(cells, c64(1)), c64(8))
            f.put(name, block)
            missing = b.or_(missing, b.icmp_unsigned("==", block, NULL))
            held = b.add(held, b.mul(cells, c64(8)))
        # `cap` is 0: the first node populates the first pages (room)
        for name, value in (("heap_cap", c64(INITIAL_WORDS)), ("spare_cap", c64(INITIAL_WORDS)),
                            ("table_mask", c64(MIN_TABLE - 1)), ("roots_cap", c64(INITIAL_CELLS)),
                            ("roots_alloc", c64(INITIAL_CELLS)),
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
