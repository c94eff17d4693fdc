"""The rules' code: one function per defined operator, and the manifest.

`farm_norm_op<k>(arena, depth, a0 .. an-1[, tracked])` (norm_type, in the convention norm_convention says) takes
the normal forms of a call's arguments and returns the call's normal form (docs/rules.md, "Semantics"): it prints
the operator's match program (farm/compiler/matchprog.py: the decision tree of farm/compiler/matchtree.py, exactly
the first rule in firing order, with each rule's tests, firing and target lowered once), calling the defined
operators a target applies and interning the rest (intern<n>, farm/compiler/codegen/intern.py). A redex is never
built. Its frame on the shadow stack holds the arguments and the values an attempt reads past a later Eval
(Eval.kept): with the children intern<n>'s slow path pushes, all the node ids a collection must see and rewrite, so
every id is read back from there after a call; a value read only up to the next Eval stays in a register.

The manifest holds what depends on the whole ruleset: the dispatch on an input row's operator
(farm_call), counts, arities, first rule of each operator, memo width and fingerprint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

from farm.compiler import matchprog as mp
from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import (
    ERR_CALLS,
    ERR_CYCLE,
    ERR_DEPTH,
    ERR_FUEL,
    IN_PROGRESS,
    NO_MATCH,
)
from farm.compiler.codegen.heap import (
    LIT_HEADER,
    RUNTIME_CALLS,
    SHARED_INTERN_ARITY,
    call,
    count_firing,
    header,
    push_roots,
    track_room,
)
from farm.compiler.codegen.intern import hash_words, intern_function, shared_intern_name
from farm.compiler.codegen.irbuild import I1, I64, PTR, FunctionBuilder, c64, declare, is_quick
from farm.compiler.matchtree import NODE_BUDGET, Occurrence
from farm.lang.transduce import RuleSet
from farm.semantics import MAX_CALL_DEPTH, MAX_CONDITION_DEPTH, MAX_MEMO_ENTRIES
from farm.trampoline import Step, run

# Up to this many rules, intern<n>'s fast path is inlined at every construction: reverse-10000 runs 8%
# faster, but big.farm (1,200 rules) took 27.3 s to compile instead of 11.8 s, its library 880 KB, not 362 KB.
INLINE_INTERN_RULES = 100


def norm_name(op: int) -> str:
    return f"farm_norm_op{op}"


# Operator functions call each other in LLVM's GHC convention where it can take their parameters: it has no
# callee-saved registers, so a call does not push and pop six of them around its body (reverse-1000 17% faster).
# Its parameters are all registers, at most 10 on aarch64 (llc aborts past that), and no i1 there. Not for code
# compiled at -O0 (tier 0): instruction selection's fast path does not take that convention and falls back to the
# slow one for each call (arith's rules: 303 fallbacks instead of 39, llc -O0 10-20% slower).
GHC_CONVENTION_PARAMETERS = 10


def norm_convention(arity: int, flagged: bool, register_calls: bool = True) -> str:
    """The calling convention of an operator's function (norm_type)."""
    return "ghccc" if register_calls and not flagged and 2 + arity <= GHC_CONVENTION_PARAMETERS else ""


def norm_type(arity: int, flagged: bool) -> ir.FunctionType:
    """(arena, depth, arguments[, tracked]): `depth` counts the calls nested down to this one (an input row's
    is 1), passed in a register rather than counted in the arena, which each call would read and write twice.
    An operator some of whose calls are not tracked takes a flag."""
    return ir.FunctionType(I64, [PTR, I64] + [I64] * arity + ([I1] if flagged else []))


class RulesModule:
    """Emits operator functions and the manifest of one ruleset into a module."""

    def __init__(self, module: ir.Module, ruleset: RuleSet, internal: bool, tree_budget: int = NODE_BUDGET) -> None:
        self.m = module
        self.ruleset = ruleset
        self.internal = internal  # all operators in this one module: their functions are private to it
        self.quick = is_quick(module)  # irbuild.quick: C calls, the runtime's intern<n> and farm_fire
        self.tree_budget = tree_budget
        self.op_ids = {name: i for i, (name, _) in enumerate(ruleset.signature)}
        self.arities = dict(ruleset.signature)
        self.lowering = mp.Lowering(ruleset, tree_budget)
        self.by_root = self.lowering.by_root
        self.memoised, self.tracked = self.lowering.memoised, self.lowering.tracked
        self.flagged = self.lowering.flagged

    def norm_function(self, op_name: str) -> ir.Function:
        op = self.op_ids[op_name]
        arity, flagged = self.arities[op_name], op_name in self.flagged
        fn = declare(self.m, norm_name(op), norm_type(arity, flagged))
        fn.calling_convention = norm_convention(arity, flagged, register_calls=not self.quick)
        if self.internal:
            fn.linkage = "internal"
        return fn

    def call_norm(self, f: FunctionBuilder, op_name: str, depth: ir.Value, args: list[ir.Value],
                  tracked: bool = True) -> ir.Value:
        """A call of an operator's function at `depth` (norm_type); `tracked` False for a call
        farm/semantics/callgraph.py leaves untracked."""
        flag = [ir.Constant(I1, int(tracked))] if op_name in self.flagged else []
        return f.call(self.norm_function(op_name), [f.arena, depth, *args, *flag])

    def intern_function(self, arity: int) -> ir.Function:
        """intern<n>: this module's own (inlined at -O2 in a small ruleset), or in a quick module the runtime's."""
        if self.quick and arity <= SHARED_INTERN_ARITY:
            name = shared_intern_name(arity)
            return declare(self.m, name, RUNTIME_CALLS[name])
        return intern_function(self.m, arity, len(self.ruleset.rules) <= INLINE_INTERN_RULES)

    def emit_operator(self, op_name: str) -> None:
        fn = self.norm_function(op_name)
        _OperatorEmitter(self, FunctionBuilder.body_of(fn), self.lowering.operator(op_name)).emit()

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
        cases = [(op, f.block(f"op{op}")) for op in range(len(values))]
        f.dispatch(f.args[0], unknown, cases)
        for (_, case), value in zip(cases, values):
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
        cases = [(self.op_ids[op_name], f.block(f"op{self.op_ids[op_name]}")) for op_name in self.by_root]
        f.dispatch(op, constructor, cases)
        for op_name, (_, case) in zip(self.by_root, cases):
            f.b.position_at_end(case)
            values = [f.load_at(args, c64(j), "roots") for j in range(self.arities[op_name])]
            f.b.ret(self.call_norm(f, op_name, c64(1), values))
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
    """The body of one operator's function: frame, memo or tracking, then its match program printed."""

    def __init__(self, rules_module: RulesModule, f: FunctionBuilder, program: mp.OperatorProgram) -> None:
        self.rm, self.f, self.b = rules_module, f, f.b
        self.program = program
        self.op_name = program.op
        self.op = rules_module.op_ids[program.op]
        self.arity = program.arity
        self.memoised, self.tracked = program.memoised, program.tracked
        self.values_at = self.arity  # slots of the values an attempt keeps (Eval.kept k at values_at + k)
        # Calls and interning take their arguments in registers (interning's slow path pushes them).
        self.frame = self.values_at + program.temps
        self.base: ir.Value = c64(0)
        self.depth = f.args[1]  # norm_type
        # Loaded children by occurrence, with the generation they were loaded in: valid while no call was
        # emitted since on the path being emitted. Each occurrence a subtree reads is loaded on its own path.
        self.env: dict[Occurrence, tuple[ir.Value, int]] = {}
        self._generations = itertools.count(1)
        self.generation = 0
        self._exit: tuple[ir.Block, ir.Value] | None = None  # the shared way out (leave()) and its value's slot

    def emit(self) -> None:
        f, b = self.f, self.b
        self._enter()
        no_rule = f.block("no_rule")
        run(_ProgramPrinter(self).program(self.program.body, no_rule))
        b.position_at_end(no_rule)
        node = self.intern(self.arity << 32 | self.op, [f.root(f.plus(self.base, i)) for i in range(self.arity)])
        f.return_if_error(node)
        self.leave(node)
        if self._exit is not None:
            exit_block, result = self._exit
            b.position_at_end(exit_block)
            self._leave(f.read(result))

    def _enter(self) -> None:
        """Stack checks, then the frame: arguments, and the other slots cleared (the collector reads them)."""
        f, b = self.f, self.b
        here = b.ptrtoint(f.buffer(1), I64)
        with b.if_then(b.icmp_unsigned("<", here, f.get("stack_floor")), likely=f.unlikely()):
            f.return_if_error(call(f, "farm_stack", f.arena, here))  # ERR_STACK, or stack pages populated
        f.return_if(b.icmp_signed(">", self.depth, c64(MAX_CALL_DEPTH)), c64(ERR_CALLS))
        self.base = push_roots(f, [*f.args[2:2 + self.arity], *[c64(-1)] * (self.frame - self.arity)])
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
        args = [f.root(f.plus(self.base, i)) for i in range(self.arity)]
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
            same = b.and_(same, b.icmp_signed("==", f.load_at(memo, f.plus(entry, 2 + k)), arg))
        b.cbranch(same, hit, other)
        b.position_at_end(hit)
        value = f.load_at(memo, f.plus(entry, 1))
        b.store(b.select(b.icmp_signed("==", value, c64(IN_PROGRESS)), c64(ERR_CYCLE), value), known)
        b.branch(done)
        b.position_at_end(other)
        count = f.get("memo_count")
        roomy = b.and_(b.icmp_signed("<", count, c64(MAX_MEMO_ENTRIES)),
                       b.icmp_signed("<=", b.mul(b.add(count, c64(1)), c64(2)), b.add(mask, c64(1))))
        b.cbranch(b.and_(b.icmp_signed("==", found, c64(0)), roomy), claim, slow)
        b.position_at_end(claim)
        for k, word in enumerate([tag, c64(IN_PROGRESS), *args]):
            f.store_at(memo, f.plus(entry, k), word)
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
        args = [f.root(f.plus(self.base, i)) for i in range(self.arity)]
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
                    f.store_at(table, f.plus(entry, k), word)
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
                    f.store_at(table, f.plus(entry, k), c64(0))
                f.bump("track_count", -1)
            with slow:
                call(f, "farm_track_leave", f.arena, c64(self.op), c64(self.arity), f.root_ptr(self.base))

    def intern(self, head: int, kids: list[ir.Value]) -> ir.Value:
        """The shared node (head, kids)."""
        return self.f.call(self.rm.intern_function(len(kids)), [self.f.arena, c64(head), *kids])

    @contextmanager
    def _if_tracked(self) -> Iterator[None]:
        """What follows runs for a tracked call: always, or as the call's flag says (norm_type)."""
        if self.op_name not in self.rm.flagged:
            yield
            return
        with self.b.if_then(self.f.args[2 + self.arity]):
            yield

    def _pop(self) -> None:
        self.f.put("rsp", self.base)

    def leave(self, value: ir.Value) -> None:
        """Return the normal form. A memoised or tracked call has more to do on its way out than pop its frame:
        that is emitted once, in a block every return branches to (it was a tenth of a rules module, once per
        rule)."""
        if not (self.memoised or self.tracked):
            self._leave(value)
            return
        if self._exit is None:
            self._exit = (self.f.block("leave"), self.f.var(c64(0)))
        exit_block, result = self._exit
        self.b.store(value, result)
        self.b.branch(exit_block)

    def _leave(self, value: ir.Value) -> None:
        if self.memoised:
            self._memo_leave(value)
        if self.tracked:
            with self._if_tracked():
                self._untrack()
        self._pop()
        self.f.b.ret(value)

    def occurrence(self, occ: Occurrence) -> ir.Value:
        """The node at a path from the arguments. A switch loads its case's children once (`env`); after a
        call (which may collect and move every node) they are read again, from the frame and down the path."""
        depth = len(occ)
        while depth > 1 and self.env.get(occ[:depth], (None, -1))[1] != self.generation:
            depth -= 1
        node = self.env[occ[:depth]][0] if depth > 1 else self.f.root(self.f.plus(self.base, occ[0]))
        for j in occ[depth:]:
            node = self.f.content(node, j)
        return node

    def invalidate(self) -> None:
        """A call was emitted: node ids loaded before it are stale from here on."""
        self.generation = next(self._generations)

    def fire(self, rule: int) -> None:
        """Count the firing and the step, inline; in a quick module, by the runtime's farm_fire (the count inline
        was a quarter of arith's tier-0 code)."""
        f, k = self.f, c64(rule - self.program.first_rule)
        if f.quick:
            f.return_if_error(call(f, "farm_fire", f.arena, c64(self.op), k))
        else:
            f.return_if(f.b.icmp_signed(">", count_firing(f, c64(self.op), k), f.get("fuel")), c64(ERR_FUEL))


class _ProgramPrinter:
    """An operator's match program (farm/compiler/matchprog.py) as IR. An attempt's kept values live in frame slots,
    where a collection finds and moves them; nodes are read again after each call (_OperatorEmitter.occurrence)."""

    def __init__(self, op: _OperatorEmitter) -> None:
        self.op, self.f, self.b = op, op.f, op.f.b
        self.fresh: dict[int, ir.Value] = {}  # the attempt's values not kept in a slot
        self.kept: dict[int, int] = {}  # the slot of each value kept (Eval.kept), by Temp index

    def program(self, node: mp.Program, on_fail: ir.Block) -> Step[None]:
        """A trampoline step (farm/trampoline.py): programs are as deep as patterns are large."""
        if isinstance(node, mp.NoMatch):
            self.b.branch(on_fail)
        elif isinstance(node, mp.Chain):
            rest = self.f.block("next_chunk")
            yield self.program(node.first, rest)
            self.b.position_at_end(rest)
            self.op.invalidate()  # reached from anywhere in `first`, after calls too
            yield self.program(node.rest, on_fail)
        elif isinstance(node, mp.Switch):
            yield self._switch(node, on_fail)
        else:
            yield self._attempt(node, on_fail)

    def _switch(self, switch: mp.Switch, on_fail: ir.Block) -> Step[None]:
        b, f, op = self.b, self.f, self.op
        node = op.occurrence(switch.occurrence)
        head = f.word(node, 0)
        default = f.block("default")
        entry = op.generation  # every case and the default start from what holds at the switch
        fields = f.snapshot()  # and so do the arena fields loaded here (no block on the way calls anything)
        if switch.literals:
            lit_block, app_block = f.block("literal"), f.block("application")
            b.cbranch(b.icmp_signed("==", head, c64(LIT_HEADER)), lit_block, app_block)
            b.position_at_end(lit_block)
            f.carry(fields)
            payload = f.content(node, 0)
            at_literal = f.snapshot()
            literal_cases = [(value, f.block("lit")) for value, _ in switch.literals]
            f.dispatch(payload, default, literal_cases)
            for (_, case), (_, sub) in zip(literal_cases, switch.literals):
                b.position_at_end(case)
                f.carry(at_literal)
                op.generation = entry
                yield self.program(sub, on_fail)
            b.position_at_end(app_block)
            f.carry(fields)
        operator = f.op_of(head)
        at_application = f.snapshot()
        operator_cases = [(op.rm.op_ids[op_case.op], f.block("app")) for op_case in switch.operators]
        f.dispatch(operator, default, operator_cases)
        for (_, case), op_case in zip(operator_cases, switch.operators):
            b.position_at_end(case)
            f.carry(at_application)
            op.generation = entry
            for j, child in enumerate(op_case.children):
                op.env[child] = (f.content(node, j), entry)
            yield self.program(op_case.body, on_fail)
        b.position_at_end(default)
        f.carry(fields)
        op.generation = entry
        yield self.program(switch.default, on_fail)

    def _attempt(self, attempt: mp.Attempt, on_fail: ir.Block) -> Step[None]:
        b, f, op = self.b, self.f, self.op
        otherwise = f.block("otherwise")
        entry = after_tests = op.generation
        self.fresh, self.kept = {}, {}
        for step in attempt.steps:
            if isinstance(step, mp.Test):
                passed = f.block("passed")
                held = (passed, otherwise) if step.holds else (otherwise, passed)
                b.cbranch(self._condition(step.condition), *held)
                fields = f.snapshot()
                b.position_at_end(passed)
                f.carry(fields)
            elif isinstance(step, mp.Eval):
                self._eval(step)
            elif isinstance(step, mp.EnterCondition):
                depth = b.add(f.get("depth"), c64(1))
                f.return_if(b.icmp_signed(">", depth, c64(MAX_CONDITION_DEPTH)), c64(ERR_DEPTH))
                f.put("depth", depth)
            elif isinstance(step, mp.LeaveCondition):
                f.bump("depth", -1)
            elif isinstance(step, mp.Fire):
                after_tests = op.generation
                op.fire(step.rule)
            else:
                op.leave(self.read(step.value))
        b.position_at_end(otherwise)
        # `otherwise` is reached from each test: what was loaded holds there only if no guard called.
        op.generation = entry
        if after_tests != entry:
            op.invalidate()
        yield self.program(attempt.otherwise, on_fail)

    def read(self, value: mp.Value) -> ir.Value:
        if isinstance(value, mp.Node):
            return self.op.occurrence(value.occurrence)
        if value.index in self.fresh:
            return self.fresh[value.index]
        return self.f.root(self.f.plus(self.op.base, self.kept[value.index]))

    def _eval(self, step: mp.Eval) -> None:
        f, op = self.f, self.op
        expr = step.expr
        if isinstance(expr, (mp.MakeLit, mp.Compute)):
            literal = c64(expr.value) if isinstance(expr, mp.MakeLit) else self._arith(expr)
            value = call(f, "farm_lit", f.arena, literal)
        elif isinstance(expr, mp.Call):
            value = op.rm.call_norm(f, expr.op, f.plus(op.depth, 1), [self.read(arg) for arg in expr.args],
                                    expr.tracked)
        else:
            args = [self.read(arg) for arg in expr.args]
            value = op.intern(len(args) << 32 | op.rm.op_ids[expr.op], args)
        op.invalidate()
        f.return_if_error(value)
        if step.kept is None:
            self.fresh[step.dest.index] = value
        else:
            slot = self.kept[step.dest.index] = op.values_at + step.kept
            f.set_root(f.plus(op.base, slot), value)

    def _condition(self, c: mp.Condition) -> ir.Value:
        b = self.b
        if isinstance(c, mp.Same):
            return b.icmp_signed("==", self.read(c.left), self.read(c.right))
        if isinstance(c, mp.IsLit):
            return self._is_lit(self.read(c.value))
        (lit_a, a), (lit_b, b_) = self._literal(c.left), self._literal(c.right)
        checks = [lit for lit in (lit_a, lit_b) if lit is not None]
        if len(checks) == 2:
            checks = [b.and_(checks[0], checks[1])]
        return b.and_(checks[0], b.icmp_signed(c.op, a, b_)) if checks else b.icmp_signed(c.op, a, b_)

    def _is_lit(self, node: ir.Value) -> ir.Value:
        return self.b.icmp_signed("==", self.f.word(node, 0), c64(LIT_HEADER))

    def _literal(self, side: mp.Value | int) -> tuple[ir.Value | None, ir.Value]:
        """(whether it is a literal, None for a constant; its value)."""
        if isinstance(side, int):
            return None, c64(side)
        node = self.read(side)
        return self._is_lit(node), self.f.content(node, 0)

    def _arith(self, compute: mp.Compute) -> ir.Value:
        b = self.b
        ops = {"+": b.add, "-": b.sub, "*": b.mul, "/": b.sdiv, "%": b.srem, "&": b.and_, "|": b.or_, "^": b.xor}
        values: list[ir.Value] = []
        for item in compute.items:
            if isinstance(item, mp.Const):
                values.append(c64(item.value))
            elif isinstance(item, mp.Payload):
                values.append(self.f.content(self.read(item.value), 0))
            elif isinstance(item, mp.Negate):
                values.append(b.sub(c64(0), values[item.operand]))
            elif item.op in ops:
                values.append(ops[item.op](values[item.left], values[item.right]))
            else:
                shift = b.and_(values[item.right], c64(63))
                shift_op = b.shl if item.op == "<<" else b.ashr
                values.append(shift_op(values[item.left], shift))
        return values[-1]


__all__ = ["RulesModule", "norm_name"]
