"""The runtime's copying collector (Cheney) and the growth of its spaces and stacks."""



from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import (
    CONTENT_AT,
    ERR_OOM,
    ERR_STACK,
    FORWARDED,
    MADV_POPULATE_WRITE,
    SHARED_PARENT,
)
from farm.compiler.codegen.heap import (
    ARGS_AT,
    LIT_HEADER,
    LIVE_FRACTION,
    MAX_STACK_CHUNK,
    MIN_STACK_CHUNK,
    PAGE_BYTES,
    SURVIVAL_DENOMINATOR,
    SURVIVAL_NUMERATOR,
    RuntimePart,
    call,
    call_internal,
    heap_nodes,
    node_words,
    parent_at,
    populate_ahead,
    table_slots,
)
from farm.compiler.codegen.irbuild import (
    FALSE,
    I1,
    I32,
    I64,
    NULL,
    PTR,
    TRUE,
    VOID,
    FunctionBuilder,
    c64,
)


class Collector(RuntimePart):
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
        # the copy writes the spare space's pages in order: populated ahead, as the heap's (reach)
        with b.if_then(b.icmp_signed(">", b.add(fresh, size), f.get("spare_ready")), likely=False):
            populate_ahead(f, to, "spare_ready", b.add(fresh, size), "spare_cap")
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
        self._allocate_spare(f)
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
        old, old_cap = f.get("heap"), f.get("heap_cap")
        f.put("heap", to)
        f.put("heap_cap", f.get("spare_cap"))
        ready, old_ready = f.get("spare_ready"), f.get("cap")
        f.put("spare", old)
        f.put("spare_cap", old_cap)
        f.put("spare_ready", old_ready)
        top = f.read(to_top)
        f.put("top", top)
        f.put("cap", ready)  # the pages populated (by the copy, or when this space was the heap before)
        self._forward_parents(f, top)
        f.bump("collections", 1)
        kept_most = b.icmp_signed(">", b.mul(top, c64(SURVIVAL_DENOMINATOR)), b.mul(scanned, c64(SURVIVAL_NUMERATOR)))
        f.put("grow_next", b.zext(kept_most, I64))
        with b.if_then(b.icmp_signed(">", top, f.get("peak_words"))):
            f.put("peak_words", top)
        # Each collection copies the live nodes: keeping the space at least LIVE_FRACTION times the live
        # nodes bounds that to 1 / (LIVE_FRACTION - 1) word copied per word allocated.
        wanted = b.add(top, need)
        with b.if_then(b.icmp_signed(">", b.mul(wanted, c64(LIVE_FRACTION)), f.get("heap_cap"))):
            grown = call_internal(f, "grow_spaces", I1, [PTR, I64], arena, b.mul(wanted, c64(LIVE_FRACTION)))
            with b.if_then(b.not_(b.or_(grown, b.icmp_signed("<=", wanted, f.get("heap_cap"))))):
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
            wanted = b.mul(b.add(f.get("heap_cap"), f.args[1]), c64(LIVE_FRACTION))
            grown = call_internal(f, "grow_spaces", I1, [PTR, I64], f.arena, wanted)
            f.return_if(b.and_(grown, b.icmp_signed("<=", b.add(f.get("top"), f.args[1]), f.get("heap_cap"))),
                        c64(0))

    @staticmethod
    def _allocate_spare(f: FunctionBuilder) -> None:
        """The spare space, if growing the spaces freed it (grow_spaces): `spare_cap` words, charged already;
        returns ERR_OOM from the function when malloc refuses."""
        b = f.b
        with b.if_then(b.icmp_unsigned("==", f.get("spare"), NULL), likely=False):
            spare = call(f, "malloc", b.mul(f.get("spare_cap"), c64(8)))
            f.return_if(b.icmp_unsigned("==", spare, NULL), c64(ERR_OOM))
            f.put("spare", spare)

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
        """grow_spaces(arena, words): both spaces at least that large (doubling), charged at once; false when
        out of memory. The heap is reallocated (its nodes stay); the spare space, whose contents do not matter,
        is freed, and the next collection allocates it (_allocate_spare). Reallocating it as well copied its
        garbage into fresh pages: where glibc serves the spaces from its heap, realloc moves a block it cannot
        extend, and the old blocks' pages, all touched, went unused. Freed first, the old spare (with the
        old heap, when realloc moved it) serves that allocation: reverse-1000's farm_rewrite takes 508 page
        faults instead of 750 on a first call, and none instead of 734 on a later call in the same process.
        Spaces glibc maps on their own (above its mmap threshold) lose the old spare's pages instead."""
        f = self.new("grow_spaces", I1, [PTR, I64])
        b = f.b
        want = f.args[1]
        cap = f.get("heap_cap")
        doubled = b.mul(cap, c64(2))
        new_cap = b.select(b.icmp_signed("<", doubled, want), want, doubled)
        old_bytes = b.mul(b.add(cap, f.get("spare_cap")), c64(8))
        new_bytes = b.mul(new_cap, c64(8))
        f.return_if(b.not_(call(f, "charge", f.arena, old_bytes, b.mul(new_bytes, c64(2)))), FALSE)
        call(f, "free", f.get("spare"))
        f.put("spare", NULL)  # spare_cap words, still charged
        f.put("spare_ready", c64(0))
        heap = call(f, "realloc", f.get("heap"), new_bytes)
        with b.if_then(b.icmp_unsigned("==", heap, NULL), likely=False):
            call(f, "charge", f.arena, b.mul(new_bytes, c64(2)), old_bytes)  # realloc kept the heap as it was
            b.ret(FALSE)
        f.put("heap", heap)
        f.put("heap_cap", new_cap)  # `cap` stays: the pages below it are populated still (realloc keeps them)
        f.put("spare_cap", new_cap)
        b.ret(TRUE)

    def _room(self) -> None:
        """room(arena, words): make room for `words` more words at `top`, below `cap`, which the allocation
        fast path checks (the rules' code and farm_intern): populate the next pages of the space when it has
        room (reach), else collect first. 0, or ERR_OOM."""
        f = self.new("room", I64, [PTR, I64])
        b = f.b
        arena, words = f.args
        with b.if_then(b.icmp_signed(">", b.add(f.get("top"), words), f.get("heap_cap"))):
            f.return_if_error(call_internal(f, "collect", I64, [PTR, I64], arena, words))
        call_internal(f, "reach", VOID, [PTR, I64], arena, b.add(f.get("top"), words))
        b.ret(c64(0))

    def _reach(self) -> None:
        """reach(arena, words): move `cap` up to at least `words` (at most `heap_cap`), by a chunk as large as
        the populated part (MIN_CHUNK to MAX_CHUNK words), and populate the pages in between with one
        madvise(MADV_POPULATE_WRITE): one system call instead of a page fault per page (~1.5 us a page
        instead of 2-3 on a VM). The advice is only advice: refused (a kernel before 5.14, another page
        size), the pages fault in on first touch as before."""
        f = self.new("reach", VOID, [PTR, I64])
        populate_ahead(f, f.get("heap"), "cap", f.args[1], "heap_cap")
        f.b.ret_void()

    def _populate(self) -> None:
        """populate(from, to): ask the kernel to populate the pages of the addresses [from, to) for writing
        (MADV_POPULATE_WRITE), from the first page boundary at or above `from` (the page below holds bytes
        populated already, or the block's start). The advice is only advice: refused (a kernel before 5.14,
        another page size, addresses not mapped), the pages fault in on first touch."""
        f = self.new("populate", VOID, [I64, I64])
        b = f.b
        start, end = f.args
        first = b.and_(b.add(start, c64(PAGE_BYTES - 1)), c64(-PAGE_BYTES))
        with b.if_then(b.icmp_unsigned(">", end, first)):
            call(f, "madvise", b.inttoptr(first, PTR), b.sub(end, first), ir.Constant(I32, MADV_POPULATE_WRITE))
        b.ret_void()

    def _stack(self) -> None:
        """farm_stack(arena, frame address): a call's frame is below `stack_floor`. ERR_STACK when it is
        below `stack_end` too; else populate the next stack pages below the floor (a chunk as large as the
        stack populated so far, MIN_STACK_CHUNK to MAX_STACK_CHUNK bytes, not past `stack_end`) and lower the
        floor: deep recursion touches fresh stack pages one after the other, as the heap does. 0."""
        f = self.new("farm_stack", I64, [PTR, I64], internal=False)
        b = f.b
        here = f.args[1]
        end = f.get("stack_end")
        f.return_if(b.icmp_unsigned("<", here, end), c64(ERR_STACK))
        floor = f.get("stack_floor")
        depth = b.sub(f.get("stack_top"), floor)
        chunk = b.select(b.icmp_signed("<", depth, c64(MIN_STACK_CHUNK)), c64(MIN_STACK_CHUNK),
                         b.select(b.icmp_signed(">", depth, c64(MAX_STACK_CHUNK)), c64(MAX_STACK_CHUNK), depth))
        below = b.sub(b.select(b.icmp_unsigned("<", here, floor), here, floor), chunk)
        new_floor = b.select(b.icmp_unsigned("<", below, end), end, below)
        call_internal(f, "populate", VOID, [I64, I64], new_floor, floor)
        f.put("stack_floor", new_floor)
        b.ret(c64(0))

    def _grow_roots(self) -> None:
        """farm_grow_roots(arena, cells): the shadow stack's first `cells` cells usable (below `roots_cap`),
        false when out of memory. Deep recursion pushes frames onto fresh pages one after the other: the
        stack grows (doubling, charged) only at its capacity, `roots_alloc`, and its pages are populated a
        chunk ahead of the frames, as the heap's (reach)."""
        f = self.new("farm_grow_roots", I1, [PTR, I64], internal=False)
        b = f.b
        need = f.args[1]
        f.return_if(b.not_(self.grow(f, "roots", "roots_alloc", need)), FALSE)
        populate_ahead(f, f.get("roots"), "roots_cap", need, "roots_alloc")
        b.ret(TRUE)
