"""The rules' code: one function per defined operator, and the manifest.

`farm_norm_op<k>(arena, a0 .. an-1)` takes the normal forms of a call's arguments and returns the call's
normal form (docs/rules.md, "Semantics"): it matches them with the operator's decision tree
(farm/matchtree.py: exactly the first rule in firing order), checks the guards, counts the step, and
evaluates the target innermost, calling the defined operators it applies and interning the rest. A redex is
never built. Its frame on the shadow stack holds the arguments, the values of the rule's sub-expressions,
and the children of the node being interned: all the node ids a collection must see and rewrite, so every
id is read back from there after a call.

The manifest holds what depends on the whole ruleset: the dispatch on an input row's operator
(farm_call), counts, arities, first rule of each operator, memo width and fingerprint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

from llvmlite import ir

from farm.callgraph import fresh_subexpressions, memoised_ops, rule_expressions, tracked_ops, untracked_calls
from farm.codegen.abi import (
    ERR_CALLS,
    ERR_CYCLE,
    ERR_DEPTH,
    ERR_FUEL,
    ERR_OOM,
    ERR_STACK,
    IN_PROGRESS,
    NO_MATCH,
    NO_PARENT,
)
from farm.codegen.irbuild import I1, I64, PTR, TRUE, FunctionBuilder, c64, declare
from farm.codegen.runtime import (
    K1,
    K2,
    LIT_HEADER,
    TAG_SHIFT,
    call,
    header,
    parent_at,
    same_node,
    track_room,
)
from farm.matchtree import NODE_BUDGET, Chain, Fail, Leaf, Occurrence, Switch, Tree, build_tree
from farm.rules import App, BinOp, Compare, Computed, Constraint, IsConst, Lit, LitExpr, Neg, PatternExpr, Var
from farm.semantics import MAX_CALL_DEPTH, MAX_CONDITION_DEPTH, MAX_MEMO_ENTRIES
from farm.trampoline import Step, run
from farm.transduce import RewriteRule, RuleSet

# Up to this many rules, intern<n>'s fast path is inlined at every construction: reverse-10000 runs 8%
# faster, but big.farm (1,200 rules) took 27.3 s to compile instead of 11.8 s, its library 880 KB, not 362 KB.
INLINE_INTERN_RULES = 100


def hash_words(b: ir.IRBuilder, head: ir.Value, words: list[ir.Value]) -> ir.Value:
    """The runtime's hash_words, unrolled: the runtime finds what this code files, and back."""
    h = b.mul(head, c64(K1))
    for word in words:
        mixed = b.mul(b.xor(h, word), c64(K2))
        h = b.xor(mixed, b.lshr(mixed, c64(29)))
    return b.xor(h, b.lshr(h, c64(32)))


def kids_equal(f: FunctionBuilder, node: ir.Value, kids: list[ir.Value]) -> ir.Value:
    """Whether `node`'s children are these (unrolled; the caller checked its header)."""
    same = TRUE
    for k, kid in enumerate(kids):
        same = f.b.and_(same, f.b.icmp_signed("==", f.content(node, k), kid))
    return same


def norm_name(op: int) -> str:
    return f"farm_norm_op{op}"


def norm_type(arity: int, flagged: bool) -> ir.FunctionType:
    """(arena, arguments[, tracked]): an operator some of whose calls are not tracked takes a flag."""
    return ir.FunctionType(I64, [PTR] + [I64] * arity + ([I1] if flagged else []))


class RulesModule:
    """Emits operator functions and the manifest of one ruleset into a module."""

    def __init__(self, module: ir.Module, ruleset: RuleSet, internal: bool, tree_budget: int = NODE_BUDGET) -> None:
        self.m = module
        self.ruleset = ruleset
        self.internal = internal  # all operators in this one module: their functions are private to it
        self.tree_budget = tree_budget
        self.op_ids = {name: i for i, (name, _) in enumerate(ruleset.signature)}
        self.arities = dict(ruleset.signature)
        self.by_root = ruleset.rules_by_root()
        self.memoised = memoised_ops(ruleset)
        self.tracked = tracked_ops(ruleset)
        self.untracked = untracked_calls(ruleset)
        self.flagged = frozenset(call.op for _, call in self.untracked)

    def norm_function(self, op_name: str) -> ir.Function:
        op = self.op_ids[op_name]
        fn = declare(self.m, norm_name(op), norm_type(self.arities[op_name], op_name in self.flagged))
        if self.internal:
            fn.linkage = "internal"
        return fn

    def call_norm(self, f: FunctionBuilder, op_name: str, args: list[ir.Value], tracked: bool = True) -> ir.Value:
        """A call of an operator's function; `tracked` False for a call farm/callgraph.py leaves untracked."""
        flag = [ir.Constant(I1, int(tracked))] if op_name in self.flagged else []
        return f.b.call(self.norm_function(op_name), [f.arena, *args, *flag])

    def intern_function(self, arity: int) -> ir.Function:
        """intern<n>(arena, header, kid 0 .. kid n-1, kids*): the shared node (farm_intern's contract), with
        the common cases in this module: the last kid was never a last kid (the node is new: no hashing, no
        table), its registered parent is this node, or the first table slot probed is free or holds it.
        The others go to farm_intern (further probes, a collection), which reads the kids at `kids*` (frame
        slots on the shadow stack)."""
        name = f"intern{arity}"
        existing = self.m.globals.get(name)
        if isinstance(existing, ir.Function):
            return existing
        f = FunctionBuilder(self.m, name, I64, [PTR, I64] + [I64] * arity + [PTR])
        if len(self.ruleset.rules) <= INLINE_INTERN_RULES:
            f.fn.attributes.add("alwaysinline")
        b = f.b
        head, kids, kids_at = f.args[1], list(f.args[2:2 + arity]), f.args[-1]
        slow = f.block("slow")
        if kids:
            last = parent_at(f, kids[-1])
            parent = f.word(last, 0)
            new_block, known = f.block("fresh"), f.block("known")
            b.cbranch(b.icmp_signed("==", parent, c64(NO_PARENT)), new_block, known)
            b.position_at_end(new_block)
            top = self._bump_node(f, head, kids, slow)
            f.set_word(last, 0, top)
            b.ret(top)
            b.position_at_end(known)
            with b.if_then(b.icmp_signed(">=", parent, c64(0))):
                found = f.block("registered")
                same_node(f, parent, head, lambda node: kids_equal(f, node, kids), found)
                with b.goto_block(found):
                    b.ret(parent)
        self._first_probe(f, head, kids, slow)
        b.position_at_end(slow)
        b.ret(call(f, "farm_intern", f.arena, head, c64(arity), kids_at))
        return f.fn

    @staticmethod
    def _bump_node(f: FunctionBuilder, head: ir.Value, kids: list[ir.Value], slow: ir.Block) -> ir.Value:
        """A new node at `top` with no parent yet, when the space has room; else on to `slow`."""
        b = f.b
        top = f.get("top")
        roomy = f.block("room")
        b.cbranch(b.icmp_signed("<=", b.add(top, c64(len(kids) + 2)), f.get("cap")), roomy, slow)
        b.position_at_end(roomy)
        for k, word in enumerate([head, c64(NO_PARENT), *kids]):
            f.set_word(top, k, word)
        f.put("top", b.add(top, c64(len(kids) + 2)))
        return top

    def _first_probe(self, f: FunctionBuilder, head: ir.Value, kids: list[ir.Value], slow: ir.Block) -> None:
        """The table's first slot for this content: free (a new node, filed there) or holding it; else on to
        `slow`."""
        b = f.b
        h = hash_words(b, head, kids)
        table = f.get("table")
        idx = b.and_(h, f.get("table_mask"))
        found = f.load_at(table, idx)
        empty, occupied, equal = f.block("new"), f.block("probe"), f.block("compare")
        b.cbranch(b.icmp_signed("==", found, c64(0)), empty, occupied)
        b.position_at_end(empty)
        top = self._bump_node(f, head, kids, slow)
        f.store_at(table, idx, b.or_(b.shl(b.lshr(h, c64(TAG_SHIFT)), c64(TAG_SHIFT)), b.add(top, c64(1))))
        f.bump("table_count", 1)
        b.ret(top)
        b.position_at_end(occupied)
        cand = b.sub(b.and_(found, c64((1 << TAG_SHIFT) - 1)), c64(1))
        tagged = b.icmp_signed("==", b.lshr(found, c64(TAG_SHIFT)), b.lshr(h, c64(TAG_SHIFT)))
        b.cbranch(tagged, equal, slow)
        b.position_at_end(equal)
        hit = f.block("hit")
        same_node(f, cand, head, lambda node: kids_equal(f, node, kids), hit)
        b.branch(slow)
        with b.goto_block(hit):
            b.ret(cand)

    # ---- one operator ----

    def emit_operator(self, op_name: str) -> None:
        rules = self.by_root[op_name]
        fn = self.norm_function(op_name)
        _OperatorEmitter(self, FunctionBuilder.body_of(fn), op_name, rules).emit()

    # ---- the manifest ----

    def emit_manifest(self) -> None:
        self._dispatch()
        rs = self.ruleset
        constant = {"farm_rule_count": len(rs.rules), "farm_op_count": len(rs.signature),
                    "farm_memo_width": max((2 + self.arities[op] for op in self.memoised), default=0),
                    "farm_track_width": max((1 + self.arities[op] for op in self.tracked), default=0)}
        for name, value in constant.items():
            FunctionBuilder(self.m, name, I64, [], internal=False).b.ret(c64(value))
        self._table("farm_op_arity", [arity for _, arity in rs.signature])
        self._table("farm_op_first_rule", [self.by_root[name][0].index if name in self.by_root else 0
                                           for name, _ in rs.signature])
        self._fingerprint()

    def _table(self, name: str, values: list[int]) -> None:
        """name(op): values[op], -1 for an operator outside the ruleset."""
        f = FunctionBuilder(self.m, name, I64, [I64], internal=False)
        unknown = f.block("unknown")
        switch = f.b.switch(f.args[0], unknown)
        for op, value in enumerate(values):
            case = f.block(f"op{op}")
            switch.add_case(c64(op), case)
            f.b.position_at_end(case)
            f.b.ret(c64(value))
        f.b.position_at_end(unknown)
        f.b.ret(c64(-1))

    def _dispatch(self) -> None:
        """farm_call(arena, op, arity, args): an input row's call: its operator's function, or for a
        constructor the node itself."""
        f = FunctionBuilder(self.m, "farm_call", I64, [PTR, I64, I64, PTR], internal=False)
        _, op, arity, args = f.args
        constructor = f.block("constructor")
        switch = f.b.switch(op, constructor)
        for op_name in self.by_root:
            case = f.block(f"op{self.op_ids[op_name]}")
            switch.add_case(c64(self.op_ids[op_name]), case)
            f.b.position_at_end(case)
            values = [f.load_at(args, c64(j), "roots") for j in range(self.arities[op_name])]
            f.b.ret(self.call_norm(f, op_name, values))
        f.b.position_at_end(constructor)
        f.b.ret(call(f, "farm_intern", f.arena, header(f, op, arity), arity, args))

    def _fingerprint(self) -> None:
        """farm_fingerprint(): the ruleset's fingerprint, so a loader can refuse a library built for other rules."""
        text = bytearray(self.ruleset.fingerprint().encode() + b"\0")
        data = ir.GlobalVariable(self.m, ir.ArrayType(ir.IntType(8), len(text)), "fingerprint")
        data.linkage = "internal"
        data.global_constant = True
        data.initializer = ir.Constant(data.value_type, text)
        data.type = PTR  # referenced as `ptr`, not `[N x i8]*`
        FunctionBuilder(self.m, "farm_fingerprint", PTR, [], internal=False).b.ret(data)


class _OperatorEmitter:
    """The body of one operator's function: frame, memo, decision tree, guards, targets."""

    def __init__(self, rules_module: RulesModule, f: FunctionBuilder, op_name: str, rules: list[RewriteRule]) -> None:
        self.rm, self.f, self.b = rules_module, f, f.b
        self.op_name, self.rules = op_name, rules
        self.op = rules_module.op_ids[op_name]
        self.arity = rules_module.arities[op_name]
        self.memoised = op_name in rules_module.memoised
        self.tracked = op_name in rules_module.tracked
        self.first_rule = rules[0].index
        units = {rule.index: _units(rule) for rule in rules}
        self.values_at = self.arity  # slots of the sub-expressions' values
        self.scratch_at = self.values_at + max((len(units[rule.index]) - _returned_unslotted(rule)
                                                for rule in rules), default=0)
        # Calls take their arguments in registers: only the children of a node being interned need slots.
        self.frame = self.scratch_at + max((len(app.args) for each in units.values() for app in each
                                            if isinstance(app, App) and app.op not in rules_module.by_root),
                                           default=0)
        self.base: ir.Value = c64(0)
        # Loaded children by occurrence, with the generation they were loaded in: valid while no call was
        # emitted since on the path being emitted. Each occurrence a subtree reads is loaded on its own path.
        self.env: dict[Occurrence, tuple[ir.Value, int]] = {}
        self._generations = itertools.count(1)
        self.generation = 0

    def emit(self) -> None:
        f, b = self.f, self.b
        self._enter()
        no_rule = f.block("no_rule")
        run(self._tree(build_tree(self.rules, self.rm.tree_budget), no_rule))
        b.position_at_end(no_rule)
        node = self.intern(self.arity << 32 | self.op, [f.root(b.add(self.base, c64(i))) for i in range(self.arity)], 0)
        f.return_if_error(node)
        self._leave(node)

    def _enter(self) -> None:
        """Stack checks, then the frame: arguments, and the other slots cleared (the collector reads them)."""
        f, b = self.f, self.b
        here = b.ptrtoint(f.buffer(1), I64)
        f.return_if(b.icmp_unsigned("<", here, f.get("stack_floor")), c64(ERR_STACK))
        calls = b.add(f.get("calls"), c64(1))
        f.return_if(b.icmp_signed(">", calls, c64(MAX_CALL_DEPTH)), c64(ERR_CALLS))
        f.put("calls", calls)
        self.base = f.get("rsp")
        need = b.add(self.base, c64(self.frame))
        with b.if_then(b.icmp_signed(">", need, f.get("roots_cap")), likely=False):
            f.return_if_false(call(f, "farm_grow_roots", f.arena, need), ERR_OOM)
        for i, value in enumerate(f.args[1:1 + self.arity]):
            f.set_root(b.add(self.base, c64(i)), value)
        for i in range(self.arity, self.frame):
            f.set_root(b.add(self.base, c64(i)), c64(-1))
        f.put("rsp", need)
        if self.tracked:
            with self._if_tracked():
                self._track()
        if self.memoised:
            self._memo_enter()

    def _memo_enter(self) -> None:
        """Ask the memo. Inline when the first slot probed holds this call (its normal form, or ERR_CYCLE if
        in progress) or is free with room to claim it (then the slot and the table's epoch are kept for
        _memo_leave); otherwise the runtime's farm_memo_enter."""
        f, b = self.f, self.b
        args = [f.root(b.add(self.base, c64(i))) for i in range(self.arity)]
        tag = c64(self.arity << 32 | (self.op + 1))
        memo, width, mask = f.get("memo"), f.get("memo_width"), f.get("memo_mask")
        slot = b.and_(self.hash(tag, args), mask)
        entry = b.mul(slot, width)
        found = f.load_at(memo, entry)
        self.memo_slot = f.var(c64(-1))
        self.memo_epoch = f.var(f.get("memo_epoch"))
        known = f.var(c64(NO_MATCH))
        hit, other, claim, slow, done = (f.block(name) for name in ("memo_hit", "memo_other", "memo_claim",
                                                                     "memo_slow", "memo_asked"))
        same = b.icmp_signed("==", found, tag)
        for k, arg in enumerate(args):
            same = b.and_(same, b.icmp_signed("==", f.load_at(memo, b.add(entry, c64(2 + k))), arg))
        b.cbranch(same, hit, other)
        b.position_at_end(hit)
        value = f.load_at(memo, b.add(entry, c64(1)))
        b.store(b.select(b.icmp_signed("==", value, c64(IN_PROGRESS)), c64(ERR_CYCLE), value), known)
        b.branch(done)
        b.position_at_end(other)
        count = f.get("memo_count")
        roomy = b.and_(b.icmp_signed("<", count, c64(MAX_MEMO_ENTRIES)),
                       b.icmp_signed("<=", b.mul(b.add(count, c64(1)), c64(2)), b.add(mask, c64(1))))
        b.cbranch(b.and_(b.icmp_signed("==", found, c64(0)), roomy), claim, slow)
        b.position_at_end(claim)
        for k, word in enumerate([tag, c64(IN_PROGRESS), *args]):
            f.store_at(memo, b.add(entry, c64(k)), word)
        f.bump("memo_count", 1)
        b.store(slot, self.memo_slot)
        b.branch(done)
        b.position_at_end(slow)
        b.store(call(f, "farm_memo_enter", f.arena, c64(self.op), c64(self.arity), f.root_ptr(self.base)), known)
        b.branch(done)
        b.position_at_end(done)
        answer = f.read(known)
        with b.if_then(b.icmp_signed("!=", answer, c64(NO_MATCH))):
            f.return_if_error(answer)
            self._pop()
            b.ret(answer)

    def _memo_leave(self, value: ir.Value) -> None:
        """Remember the normal form: inline in the slot _memo_enter claimed if the memo was not rebuilt since."""
        f, b = self.f, self.b
        slot = f.read(self.memo_slot)
        same = b.and_(b.icmp_signed(">=", slot, c64(0)), b.icmp_signed("==", f.read(self.memo_epoch),
                                                                          f.get("memo_epoch")))
        with b.if_else(same) as (fast, slow):
            with fast:
                f.store_at(f.get("memo"), b.add(b.mul(slot, f.get("memo_width")), c64(1)), value)
                f.bump("memo_done", 1)
            with slow:
                call(f, "farm_memo_leave", f.arena, c64(self.op), c64(self.arity), f.root_ptr(self.base), value)

    def hash(self, head: ir.Value, words: list[ir.Value]) -> ir.Value:
        return hash_words(self.b, head, words)

    def _track(self) -> None:
        """Record this call among the tracked calls in progress. Inline when the first slot probed is free
        and the table has room (then the slot and the table's epoch are kept, for _untrack); otherwise the
        runtime's farm_track_enter, which also finds a call already in progress (ERR_CYCLE)."""
        f, b = self.f, self.b
        args = [f.root(b.add(self.base, c64(i))) for i in range(self.arity)]
        tag = c64(self.arity << 32 | (self.op + 1))
        table, width = f.get("track"), f.get("track_width")
        mask = f.get("track_mask")
        slot = b.and_(self.hash(tag, args), mask)
        entry = b.mul(slot, width)
        free = b.icmp_signed("==", f.load_at(table, entry), c64(0))
        roomy = track_room(f, f.get("track_count"), b.add(mask, c64(1)))
        self.track_slot = f.var(c64(-1))
        self.track_epoch = f.var(f.get("track_epoch"))
        with b.if_else(b.and_(free, roomy)) as (fast, slow):
            with fast:
                for k, word in enumerate([tag, *args]):
                    f.store_at(table, b.add(entry, c64(k)), word)
                f.bump("track_count", 1)
                b.store(slot, self.track_slot)
            with slow:
                entered = call(f, "farm_track_enter", f.arena, c64(self.op), c64(self.arity), f.root_ptr(self.base))
                f.return_if_error(entered)

    def _untrack(self) -> None:
        """The call returns: clear its slot inline if the table is as _track left it (no collection or growth
        since: nested calls leave theirs in reverse order, so the entry has not moved) and nothing was
        probed past it; otherwise farm_track_leave finds the entry and shifts back the ones after it."""
        f, b = self.f, self.b
        slot = f.read(self.track_slot)
        table, width, mask = f.get("track"), f.get("track_width"), f.get("track_mask")
        same = b.and_(b.icmp_signed(">=", slot, c64(0)), b.icmp_signed("==", f.read(self.track_epoch),
                                                                          f.get("track_epoch")))
        after = b.mul(b.and_(b.add(slot, c64(1)), mask), width)
        alone = b.and_(same, b.icmp_signed("==", f.load_at(table, b.select(same, after, c64(0))), c64(0)))
        with b.if_else(alone) as (fast, slow):
            with fast:
                entry = b.mul(slot, width)
                for k in range(1 + self.arity):
                    f.store_at(table, b.add(entry, c64(k)), c64(0))
                f.bump("track_count", -1)
            with slow:
                call(f, "farm_track_leave", f.arena, c64(self.op), c64(self.arity), f.root_ptr(self.base))

    def intern(self, head: int, kids: list[ir.Value], slot: int) -> ir.Value:
        """The shared node (head, kids), whose kids are also in frame slots from `slot` on."""
        f = self.f
        return f.b.call(self.rm.intern_function(len(kids)),
                        [f.arena, c64(head), *kids, f.root_ptr(self.b.add(self.base, c64(slot)))])

    @contextmanager
    def _if_tracked(self) -> Iterator[None]:
        """What follows runs for a tracked call: always, or as the call's flag says (norm_type)."""
        if self.op_name not in self.rm.flagged:
            yield
            return
        with self.b.if_then(self.f.args[1 + self.arity]):
            yield

    def _pop(self) -> None:
        self.f.put("rsp", self.base)
        self.f.bump("calls", -1)

    def _leave(self, value: ir.Value) -> None:
        f = self.f
        if self.memoised:
            self._memo_leave(value)
        if self.tracked:
            with self._if_tracked():
                self._untrack()
        self._pop()
        f.b.ret(value)

    # ---- matching ----

    def occurrence(self, occ: Occurrence) -> ir.Value:
        """The node at a path from the arguments. A switch loads its case's children once (`env`); after a
        call (which may collect and move every node) they are read again, from the frame and down the path."""
        depth = len(occ)
        while depth > 1 and self.env.get(occ[:depth], (None, -1))[1] != self.generation:
            depth -= 1
        node = self.env[occ[:depth]][0] if depth > 1 else self.f.root(self.b.add(self.base, c64(occ[0])))
        for j in occ[depth:]:
            node = self.f.content(node, j)
        return node

    def invalidate(self) -> None:
        """A call was emitted: node ids loaded before it are stale from here on."""
        self.generation = next(self._generations)

    def _tree(self, tree: Tree, on_fail: ir.Block) -> Step[None]:
        b = self.b
        if isinstance(tree, Fail):
            b.branch(on_fail)
        elif isinstance(tree, Chain):
            rest = self.f.block("next_chunk")
            yield self._tree(tree.first, rest)
            b.position_at_end(rest)
            self.invalidate()  # reached from anywhere in `first`, after calls too
            yield self._tree(tree.rest, on_fail)
        elif isinstance(tree, Switch) and tree.occurrence == ():
            # The root is this operator's call: only its own case can apply.
            (sub,) = [t for head, t in tree.cases if head == ("app", self.op_name, self.arity)]
            yield self._tree(sub, on_fail)
        elif isinstance(tree, Switch):
            yield self._switch(tree, on_fail)
        else:
            assert isinstance(tree, Leaf)
            yield self._leaf(tree, on_fail)

    def _switch(self, tree: Switch, on_fail: ir.Block) -> Step[None]:
        b, f = self.b, self.f
        node = self.occurrence(tree.occurrence)
        head = f.word(node, 0)
        lits = [(h, t) for h, t in tree.cases if h[0] == "lit"]
        apps = [(h, t) for h, t in tree.cases if h[0] == "app"]
        default = f.block("default")
        entry = self.generation  # every case and the default start from what holds at the switch
        if lits:
            lit_block, app_block = f.block("literal"), f.block("application")
            b.cbranch(b.icmp_signed("==", head, c64(LIT_HEADER)), lit_block, app_block)
            b.position_at_end(lit_block)
            switch = b.switch(f.content(node, 0), default)
            for h, sub in lits:
                case = f.block("lit")
                switch.add_case(c64(h[1]), case)  # type: ignore[arg-type]
                b.position_at_end(case)
                self.generation = entry
                yield self._tree(sub, on_fail)
            b.position_at_end(app_block)
        switch = b.switch(f.op_of(head), default)
        for h, sub in apps:
            case = f.block("app")
            switch.add_case(c64(self.rm.op_ids[h[1]]), case)  # type: ignore[index]
            b.position_at_end(case)
            self.generation = entry
            for j in range(h[2]):  # type: ignore[arg-type]
                self.env[tree.occurrence + (j,)] = (f.content(node, j), entry)
            yield self._tree(sub, on_fail)
        b.position_at_end(default)
        self.generation = entry
        yield self._tree(tree.default, on_fail)

    def _leaf(self, leaf: Leaf, on_fail: ir.Block) -> Step[None]:
        b, f = self.b, self.f
        otherwise = f.block("otherwise")
        rule = _RuleEvaluation(self, leaf)
        entry = self.generation
        for x, y in leaf.equalities:
            self._require(b.icmp_signed("==", self.occurrence(x), self.occurrence(y)), otherwise)
        for constraint in leaf.rule.constraints:
            self._require(rule.guard(constraint), otherwise)
        after_guards = self.generation
        self._fire(leaf.rule)
        self._leave(rule.target())
        b.position_at_end(otherwise)
        # `otherwise` is reached from each guard: what was loaded holds there only if no guard called.
        self.generation = entry
        if after_guards != entry:
            self.invalidate()
        yield self._tree(leaf.otherwise if leaf.otherwise is not None else Fail(), on_fail)

    def _require(self, cond: ir.Value, otherwise: ir.Block) -> None:
        passed = self.f.block("passed")
        self.b.cbranch(cond, passed, otherwise)
        self.b.position_at_end(passed)

    def _fire(self, rule: RewriteRule) -> None:
        """Count the firing and the step (the operator's first rule's index comes from the arena, so this
        code does not change when other operators' rules are added or reordered)."""
        f, b = self.f, self.b
        index = b.add(f.load_at(f.get("rule_base"), c64(self.op)), c64(rule.index - self.first_rule))
        counters = f.get("counters")
        f.store_at(counters, index, b.add(f.load_at(counters, index), c64(1)))
        steps = f.bump("steps", 1)
        f.put("last_rule", index)
        f.return_if(b.icmp_signed(">", steps, f.get("fuel")), c64(ERR_FUEL))


def _units(rule: RewriteRule) -> list[PatternExpr]:
    """Every sub-expression a rule may evaluate, each once, in evaluation order (farm/callgraph.py)."""
    seen: set[PatternExpr] = set()
    return [unit for expr in rule_expressions(rule) for unit in fresh_subexpressions(expr, seen)]


def _returned_unslotted(rule: RewriteRule) -> int:
    """1 when the target is computed last, by the target's own evaluation (_RuleEvaluation.target), and
    returned at once: nothing reads it after a call, so it needs no slot; else 0."""
    seen: set[PatternExpr] = set()
    for expr in list(rule_expressions(rule))[:-1]:  # the conditions' sides; the target comes last
        fresh_subexpressions(expr, seen)
    computed = fresh_subexpressions(rule.target, seen)
    return int(bool(computed) and computed[-1] is rule.target)


class _RuleEvaluation:
    """The guards and target of one rule at one leaf: each sub-expression's value lives in its frame slot."""

    def __init__(self, op: _OperatorEmitter, leaf: Leaf) -> None:
        self.op, self.f, self.b = op, op.f, op.b
        self.rule = leaf.rule
        self.bindings = leaf.bindings
        self.seen: set[PatternExpr] = set()
        self.slots: dict[PatternExpr, int] = {}

    def value(self, expr: PatternExpr) -> ir.Value:
        """Evaluate what of `expr` is new, then read its value."""
        for unit in fresh_subexpressions(expr, self.seen):
            self._slot(unit, self._evaluate(unit))
        return self._read(expr)

    def target(self) -> ir.Value:
        """The rule's target's value. Evaluated last, the target itself takes no slot (_returned_unslotted):
        its value goes straight to the return."""
        target = self.rule.target
        units = fresh_subexpressions(target, self.seen)
        for unit in units:
            if unit is not target:
                self._slot(unit, self._evaluate(unit))
        return self._evaluate(target) if units and units[-1] is target else self._read(target)

    def _read(self, expr: PatternExpr) -> ir.Value:
        if isinstance(expr, Var):
            return self.op.occurrence(self.bindings[expr.name])
        return self.f.root(self.b.add(self.op.base, c64(self.op.values_at + self.slots[expr])))

    def _evaluate(self, unit: PatternExpr) -> ir.Value:
        f, b, op = self.f, self.b, self.op
        if isinstance(unit, (Lit, Computed)):
            value = call(f, "farm_lit", f.arena, c64(unit.value) if isinstance(unit, Lit) else self._arith(unit.expr))
        else:
            assert isinstance(unit, App)
            args = [self._read(arg) for arg in unit.args]
            if unit.op in op.rm.by_root:
                value = op.rm.call_norm(f, unit.op, args, (self.rule.index, unit) not in op.rm.untracked)
            else:
                for j, arg in enumerate(args):
                    f.set_root(b.add(op.base, c64(op.scratch_at + j)), arg)
                value = op.intern(len(args) << 32 | op.rm.op_ids[unit.op], args, op.scratch_at)
        op.invalidate()
        f.return_if_error(value)
        return value

    def _slot(self, unit: PatternExpr, value: ir.Value) -> None:
        """Keep a unit's value where a collection finds and moves it."""
        self.slots[unit] = len(self.slots)
        self.f.set_root(self.b.add(self.op.base, c64(self.op.values_at + self.slots[unit])), value)

    # guards

    def guard(self, c: Constraint) -> ir.Value:
        b = self.b
        if isinstance(c, IsConst):
            return self._is_lit(self._read(c.var))
        if isinstance(c, Compare):
            if c.op in ("==", "!="):
                same = self._same_term(c.left, c.right)
                return same if c.op == "==" else b.not_(same)
            (lit_a, a), (lit_b, b_) = self._literal(c.left), self._literal(c.right)
            return b.and_(b.and_(lit_a, lit_b), b.icmp_signed(c.op, a, b_))
        f = self.f
        depth = b.add(f.get("depth"), c64(1))
        f.return_if(b.icmp_signed(">", depth, c64(MAX_CONDITION_DEPTH)), c64(ERR_DEPTH))
        f.put("depth", depth)
        self.value(c.left)
        self.value(c.right)
        f.bump("depth", -1)
        return b.icmp_signed("==" if c.equal else "!=", self._read(c.left), self._read(c.right))

    def _is_lit(self, node: ir.Value) -> ir.Value:
        return self.b.icmp_signed("==", self.f.word(node, 0), c64(LIT_HEADER))

    def _literal(self, side: Var | Lit) -> tuple[ir.Value, ir.Value]:
        if isinstance(side, Lit):
            return ir.Constant(I1, 1), c64(side.value)
        node = self._read(side)
        return self._is_lit(node), self.f.content(node, 0)

    def _same_term(self, left: Var | Lit, right: Var | Lit) -> ir.Value:
        """Term equality without building anything: maximal sharing makes it id equality."""
        b = self.b
        if isinstance(left, Var) and isinstance(right, Var):
            return b.icmp_signed("==", self._read(left), self._read(right))
        if isinstance(left, Lit) and isinstance(right, Lit):
            return ir.Constant(I1, int(left.value == right.value))
        var, lit = (left, right) if isinstance(left, Var) else (right, left)
        is_lit, value = self._literal(var)
        return b.and_(is_lit, b.icmp_signed("==", value, c64(lit.value)))  # type: ignore[union-attr]

    # computed literals

    def _arith(self, expr: LitExpr) -> ir.Value:
        return run(self._arith_step(expr))

    def _arith_step(self, expr: LitExpr) -> Step[ir.Value]:
        b = self.b
        if isinstance(expr, Lit):
            return c64(expr.value)
        if isinstance(expr, Var):
            return self.f.content(self._read(expr), 0)
        if isinstance(expr, Neg):
            return b.sub(c64(0), (yield self._arith_step(expr.operand)))
        assert isinstance(expr, BinOp)
        x = yield self._arith_step(expr.left)
        y = yield self._arith_step(expr.right)
        ops = {"+": b.add, "-": b.sub, "*": b.mul, "/": b.sdiv, "%": b.srem, "&": b.and_, "|": b.or_, "^": b.xor}
        if expr.op in ops:
            return ops[expr.op](x, y)
        shift = b.and_(y, c64(63))
        return b.shl(x, shift) if expr.op == "<<" else b.ashr(x, shift)


__all__ = ["RulesModule", "hash_words", "norm_name"]
