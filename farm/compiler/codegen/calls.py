"""The runtime's tables of calls: the memo (operator and arguments -> normal form, or IN_PROGRESS while
the call runs) and the tracked calls in progress (to catch a loop)."""


from collections.abc import Callable

from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import (
    ERR_CYCLE,
    ERR_OOM,
    IN_PROGRESS,
    NO_MATCH,
)
from farm.compiler.codegen.heap import (
    ARGS_AT,
    RuntimePart,
    call,
    call_internal,
    header,
    track_room,
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
from farm.semantics import MAX_MEMO_ENTRIES


class CallTables(RuntimePart):
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
