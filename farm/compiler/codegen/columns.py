"""The runtime's entry points over term-graph columns: checking and normalising the input rows
(farm_rewrite), then numbering and exporting the normal forms (farm_mark, farm_export), with their columns'
pages populated alongside (farm_populate)."""

from collections.abc import Callable

from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import (
    CONTENT_AT,
    ERR_INPUT,
    ERR_OOM,
    LIT_OP,
    MARK_BASE,
    SHARED_PARENT,
)
from farm.compiler.codegen.heap import (
    LIT_HEADER,
    MAX_EXPORT_CHUNK,
    MIN_EXPORT_CHUNK,
    MIN_STACK_CHUNK,
    NO_NODE,
    POPULATE_LEAD,
    POPULATE_STEP,
    RuntimePart,
    call,
    call_internal,
    frontier,
    heap_nodes,
    is_marked,
    number_of,
    parent_at,
    table_slots,
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
)


class Columns(RuntimePart):
    # ---- rewriting a term graph given as columns ----

    def _check_rows(self) -> None:
        """check_rows(arena, rows, ops, arities, values, kids, kids length): every row well formed (an
        operator id, the ruleset's arity for its operators, children that are earlier rows)."""
        f = self.new("check_rows", I1, [PTR, I64, PTR, PTR, PTR, PTR, I64])
        b = f.b
        _, rows, ops, arities, values, kids, n_kids = f.args
        op_count = call(f, "farm_op_count")
        with f.loop(c64(0), rows) as i:
            op = f.load_i32(ops, i)
            f.return_if(b.icmp_signed("<", op, c64(LIT_OP)), FALSE)
            with b.if_then(b.icmp_signed("!=", op, c64(LIT_OP))):
                arity, offset = f.load_i32(arities, i), f.load_at(values, i)
                bad = b.or_(b.icmp_signed("<", offset, c64(0)), b.icmp_signed(">", offset, b.sub(n_kids, arity)))
                f.return_if(b.or_(b.icmp_signed("<", arity, c64(0)), bad), FALSE)
                with b.if_then(b.icmp_signed("<", op, op_count)):
                    f.return_if(b.icmp_signed("!=", arity, call(f, "farm_op_arity", op)), FALSE)
                with f.loop(c64(0), arity) as j:
                    kid = f.load_i32(kids, b.add(offset, j))
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
        op = f.load_i32(ops, r)
        literal, app = f.block("literal"), f.block("application")
        b.cbranch(b.icmp_signed("==", op, c64(LIT_OP)), literal, app)
        b.position_at_end(literal)
        finish(r, call(f, "farm_lit", arena, f.load_at(values, r)))
        b.branch(head)
        b.position_at_end(app)
        arity, offset = f.load_i32(arities, r), f.load_at(values, r)
        with f.loop(f.load_at(f.get("work"), b.add(frame, c64(1))), arity) as k:
            kid = f.load_i32(kids, b.add(offset, k))
            with b.if_then(b.icmp_signed("<", f.load_at(f.get("nf"), kid), c64(0))):
                f.store_at(f.get("work"), b.add(frame, c64(1)), b.add(k, c64(1)))
                self.push_frame(f, sp, kid)
                b.branch(head)
        base = f.get("rsp")
        with b.if_then(b.icmp_signed(">", b.add(base, arity), f.get("roots_cap"))):
            f.return_if_false(call(f, "farm_grow_roots", f.arena, b.add(base, arity)), ERR_OOM)
        with f.loop(c64(0), arity) as j:
            f.set_root(b.add(base, j), f.load_at(f.get("nf"), f.load_i32(kids, b.add(offset, j))))
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
        checked = b.icmp_signed(">", stack, c64(0))
        f.put("stack_end", b.select(checked, b.sub(here, stack), c64(0)))
        # The first MIN_STACK_CHUNK bytes fault in as they are touched (most calls go no deeper); calls below
        # go through farm_stack, which populates the stack's pages a chunk at a time, down to stack_end.
        floor = b.sub(here, b.select(b.icmp_unsigned("<", stack, c64(MIN_STACK_CHUNK)), stack, c64(MIN_STACK_CHUNK)))
        f.put("stack_floor", b.select(checked, floor, c64(0)))
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
            for name, initial in (("steps", 0), ("last_rule", -1), ("depth", 1), ("rsp", 0)):
                f.put(name, c64(initial))
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
        (MARK_BASE - number): there is no map to clear and no list to fill (a list as long as the nodes, in
        spare pages a growing space never touched, was a third of the walk's time)."""
        f = self.new("walk", VOID, [PTR, I64, PTR])
        b = f.b
        _, n, roots = f.args

        def number(node: ir.Value, arity: ir.Value) -> None:
            marked = f.get("marked")
            f.set_word(parent_at(f, node), 0, b.sub(c64(MARK_BASE), marked))
            f.put("marked", b.add(marked, c64(1)))
            f.put("marked_kids", b.add(f.get("marked_kids"), arity))

        with f.loop(c64(0), n) as i:
            root = f.load_at(roots, i)
            # An error code is not an id: the mark is read only once the root is one (the second `with`).
            with b.if_then(b.icmp_signed(">=", root, c64(0))), b.if_then(b.not_(is_marked(f, root))):
                self._reversing_walk(f, root, lambda kid: is_marked(f, kid), number)
        b.ret_void()

    def _reversing_walk(self, f: FunctionBuilder, root: ir.Value, done_before: Callable[[ir.Value], ir.Value],
                        finish: Callable[[ir.Value, ir.Value], None]) -> None:
        """Post-order over the nodes under `root` that are not done_before(node), calling finish(node, arity)
        once all of a node's children are done; finish must make done_before(node) true and put the node's
        parent word back. Without a stack (Deutsch-Schorr-Waite pointer reversal): terms nest a million deep,
        and a stack as deep as the term was the export's largest block of fresh pages. Going down into child k
        of a node, that child's slot holds the node's own way back up and the node's parent word holds k;
        going up puts the slot back. No node under way is ever met as a child (a term graph has no cycles),
        so no one reads its parent word meanwhile, and nothing can fail half way."""
        b = f.b
        cur, back, k = f.var(root), f.var(c64(NO_NODE)), f.var(c64(0))
        scan, check, skip, down, finished, up, done = (f.block(name) for name in (
            "walk_scan", "walk_check", "walk_skip", "walk_down", "walk_finish", "walk_up", "walked"))
        b.branch(scan)
        b.position_at_end(scan)  # the next child of `cur` from k that is not done yet, if any
        node, at = f.read(cur), f.read(k)
        node_head = f.word(node, 0)
        arity = b.select(b.icmp_signed("==", node_head, c64(LIT_HEADER)), c64(0), f.arity_of(node_head))
        b.cbranch(b.icmp_signed("<", at, arity), check, finished)
        b.position_at_end(check)
        kid = f.content(node, at)
        b.cbranch(done_before(kid), skip, down)
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
        b.position_at_end(finished)  # every child done: the node's turn
        finish(node, arity)
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
        """farm_export(arena, n, roots, out_roots, ops, values, arities, kids): the nodes the roots reach as
        columns (the TermGraph layout: children first, numbered from 0), and the roots mapped; the rows
        written. One post-order walk: each row goes out as its node finishes, its children's numbers read
        from their parent words, hot from their own rows a moment before, and the node's number goes into its
        own parent word (a mark, as farm_mark's); a node is done when it is marked with a number below the
        rows written. After farm_mark with the same roots the walk meets the nodes in the order farm_mark
        numbered them, so the numbers stay. Without it the columns are sized by the bound (export_bound:
        a node takes two words at least, a child one), and their pages are populated ahead of the writes,
        a chunk at a time (populate): a large normal form's columns are mostly fresh pages."""
        f = self.export("farm_export")
        b = f.b
        arena, n, roots, out_roots, ops, values, arities, kids = f.args
        rows, written = f.var(c64(0)), f.var(c64(0))
        numbering = b.icmp_signed("==", f.get("marked"), c64(0))
        max_rows, max_kids = b.sdiv(f.get("top"), c64(2)), f.get("top")
        # How far the columns' pages are populated (rows, children): all of them when farm_mark sized them
        rows_ready = f.var(b.select(numbering, c64(0), max_rows))
        kids_ready = f.var(b.select(numbering, c64(0), max_kids))

        def exported(node: ir.Value) -> ir.Value:
            # (no `and` of the two: an unmarked node's "number" is below zero)
            return b.select(is_marked(f, node), b.icmp_signed("<", number_of(f, node), f.read(rows)), FALSE)

        def populate(columns: list[tuple[ir.Value, int]], ready: ir.Value, need: ir.Value,
                     limit: ir.Value) -> None:
            with b.if_then(b.icmp_signed(">", need, f.read(ready)), likely=False):
                old = f.read(ready)
                new = frontier(f, old, need, limit, MIN_EXPORT_CHUNK, MAX_EXPORT_CHUNK)
                for column, width in columns:
                    base = b.ptrtoint(column, I64)
                    call_internal(f, "populate", VOID, [I64, I64], b.add(base, b.mul(old, c64(width))),
                                  b.add(base, b.mul(new, c64(width))))
                b.store(new, ready)

        def emit(node: ir.Value, arity: ir.Value) -> None:
            row, start = f.read(rows), f.read(written)
            populate([(ops, 4), (values, 8), (arities, 4)], rows_ready, b.add(row, c64(1)), max_rows)
            populate([(kids, 4)], kids_ready, b.add(start, arity), max_kids)
            f.set_word(parent_at(f, node), 0, b.sub(c64(MARK_BASE), row))  # its number
            node_head = f.word(node, 0)
            is_lit = b.icmp_signed("==", node_head, c64(LIT_HEADER))
            f.store_i32(ops, row, f.op_of(node_head))
            f.store_i32(arities, row, arity)
            f.store_at(values, row, b.select(is_lit, f.content(node, 0), start))
            with f.loop(c64(0), arity) as j:
                f.store_i32(kids, b.add(start, j), number_of(f, f.content(node, j)))
            b.store(b.add(start, arity), written)
            b.store(b.add(row, c64(1)), rows)

        with f.loop(c64(0), n) as i:
            root = f.load_at(roots, i)
            with b.if_then(b.icmp_signed(">=", root, c64(0))), b.if_then(b.not_(exported(root))):
                self._reversing_walk(f, root, exported, emit)
        # the nodes numbered: a later farm_rewrite on the arena puts their parent words right (unmark)
        f.put("marked", f.read(rows))
        f.put("marked_kids", f.read(written))
        f.put_atomic("exporting", c64(0))  # a farm_populate alongside stops
        with f.loop(c64(0), n) as i:
            mapped = f.var(f.load_at(roots, i))
            with b.if_then(b.icmp_signed(">=", f.read(mapped), c64(0))):
                b.store(number_of(f, f.read(mapped)), mapped)
            f.store_at(out_roots, i, f.read(mapped))
        b.ret(f.read(rows))

    def _populate_ahead(self) -> None:
        """farm_populate(arena, ops, values, arities, kids, rows, children): on another thread than a
        farm_export into these columns, populate their pages ahead of its writes while the arena's
        `exporting` is set: from row POPULATE_LEAD on, POPULATE_STEP rows (children) of each column at a
        time, at most `rows` of the row columns and `children` of the child column. Populating a page costs
        more than the export's walk (1.5 us a page on a VM), and what this misses the export populates or
        faults in itself. The row it reached."""
        f = self.export("farm_populate")
        b = f.b
        _, ops, values, arities, kids, rows, children = f.args
        at = f.var(c64(POPULATE_LEAD))
        head, body, done = f.block("populate_head"), f.block("populate_step"), f.block("populated")
        b.branch(head)
        b.position_at_end(head)
        more = b.or_(b.icmp_signed("<", f.read(at), rows), b.icmp_signed("<", f.read(at), children))
        b.cbranch(b.and_(more, b.icmp_signed("!=", f.get_atomic("exporting"), c64(0))), body, done)
        b.position_at_end(body)
        start = f.read(at)
        end = b.add(start, c64(POPULATE_STEP))
        for column, width, cells in ((ops, 4, rows), (values, 8, rows), (arities, 4, rows), (kids, 4, children)):
            base = b.ptrtoint(column, I64)
            last = b.select(b.icmp_signed("<", end, cells), end, cells)
            call_internal(f, "populate", VOID, [I64, I64], b.add(base, b.mul(start, c64(width))),
                          b.add(base, b.mul(last, c64(width))))
        b.store(end, at)
        b.branch(head)
        b.position_at_end(done)
        b.ret(f.read(at))

    def _unmark(self) -> None:
        """unmark(arena): after farm_mark the numbered nodes' parent words hold marks, so their registered
        parents are found through nothing. Set those words to SHARED_PARENT and rebuild the table, which files
        the parents that were registered there (every node is again its last child's registered parent or in
        the table); other nodes keep theirs. False when out of memory (the marks stay, to be undone again)."""
        f = self.new("unmark", I1, [PTR])
        b = f.b
        marked = f.get("marked")
        f.return_if(b.icmp_signed("==", marked, c64(0)), TRUE)
        # The marks are found by going through the space (there is no list of them): this runs only on an
        # arena rewritten again after an export, never on the loader's one-call arenas.
        with heap_nodes(f, lambda: f.get("heap"), lambda: f.get("top")) as (node, _), \
                b.if_then(is_marked(f, node)):
            f.set_word(parent_at(f, node), 0, c64(SHARED_PARENT))
        # The table gains at most one node per mark: the registered parent of the marked node.
        slots = table_slots(f, b.add(f.get("table_count"), marked))
        f.return_if(b.not_(call_internal(f, "rebuild_table", I1, [PTR, I64], f.arena, slots)), FALSE)
        f.put("marked", c64(0))
        f.put("marked_kids", c64(0))
        b.ret(TRUE)
