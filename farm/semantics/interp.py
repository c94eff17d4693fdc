"""The reference interpreter: rewriting compiled as calls (docs/rules.md, "Semantics"), step for step as the
native code does it.

Native code and this interpreter must agree on everything observable: normal forms, firing counts, step
counts, and which error a root ends with. An input term is walked children first; a node of a defined
operator *calls* it on its children's normal forms; a call tries the operator's rules in firing order and
evaluates the first firing rule's target innermost, calling the defined operators it applies. Calls nest
as deep as the rules recurse (a million levels for `(plus s^1000000(0) 0)`), so each call is a generator
on an explicit stack that yields the calls it makes and receives their results: Python's stack stays flat.

Each rule is lowered once into two flat programs: a matcher over the call's arguments and the list of what
trying it does (guards, each condition's sides, the firing, the target), where every distinct
sub-expression is computed once in the order `farm.semantics.callgraph.fresh_subexpressions` gives. That order is
static: a rule attempt evaluates its expressions in `rule_expressions` order and stops at the first guard
that fails, so lowering with one `seen` set per rule is the same as keeping one per attempt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator

from farm.config import max_memory_from_env
from farm.errors import NonTermination
from farm.lang.rules import App, Compare, Computed, IsConst, Lit, PatternExpr, TermCondition, Var, variables
from farm.lang.terms import LIT, TermGraph
from farm.lang.transduce import RewriteRule, RuleSet
from farm.semantics import (
    DEFAULT_FUEL,
    MAX_CALL_DEPTH,
    MAX_CONDITION_DEPTH,
    MAX_MEMO_ENTRIES,
    RewriteResult,
    calls_error,
    check_fuel,
    compare,
    cycle_error,
    depth_error,
    eval_lit,
    fuel_error,
    memory_error,
)
from farm.semantics.callgraph import fresh_subexpressions, memoised_ops, tracked_ops, untracked_calls

# Estimated bytes a graph node costs the interpreter: its columns, interning key, children tuple and memo
# entries. Measured on CPython 3.11 with a growing term (tests/test_limits.py): 340-375 bytes per node of
# arity 0-3; each child adds three 8-byte references (kid_ids, the children tuple, the interning key).
BYTES_PER_NODE = 400
BYTES_PER_CHILD = 24
# And a call in progress: its suspended generator frame, its key in the memo or the tracked calls. Measured
# with a runaway tracked recursion (tests/test_limits.py, peak RSS): about 800 bytes a level besides its node.
BYTES_PER_CALL = 800

IN_PROGRESS = -1  # the memo's value for a call not yet returned (node ids are >= 0)

# Matcher instructions. The matcher fills a list of nodes that starts as the call's arguments; M_APP checks
# the operator of node `at` and appends its children, so every sub-pattern has a fixed slot in the list.
M_APP, M_LIT, M_SAME = range(3)  # (M_APP, at, op) (M_LIT, at, value) (M_SAME, at, earlier slot)
# Rule-attempt instructions, over the same list (the registers): those that compute a node append it.
I_CALL, I_CONS, I_LIT, I_COMPUTED, I_ISCONST, I_COMPARE, I_ENTER, I_COND, I_FIRE = range(9)
# (I_CALL, op, argument registers, tracked if op is) (I_CONS, op, argument registers) (I_LIT, value)
# (I_COMPUTED, expr, ((variable, register), ..))
# (I_ISCONST, register) (I_COMPARE, op, left, right: a register or a Lit) (I_ENTER,) a condition's sides
# follow, one level deeper; (I_COND, left register, right register, equal) (I_FIRE,) the rule fires.

Request = tuple[str, tuple[int, ...]]  # a call: operator and normal-form arguments (the memo's key)
Call = tuple[str, tuple[int, ...], bool]  # a call a rule attempt makes, and whether it is tracked if its op is
Attempt = Generator[Call, int, int]  # one call in progress: yields its calls, returns its normal form


class _Plan:
    """One rule lowered: its matcher, what trying it does, and which register holds its result."""

    __slots__ = ("index", "name", "match", "code", "result")

    def __init__(self, rule: RewriteRule, defined: set[str], untracked: frozenset[tuple[int, App]]) -> None:
        self.index, self.name = rule.index, rule.name
        match: list[tuple] = []
        slot: dict[str, int] = {}  # each variable's first slot
        todo: deque[tuple[PatternExpr, int]] = deque((arg, i) for i, arg in enumerate(rule.source.args))
        size = len(rule.source.args)
        while todo:  # breadth first, so the M_APPs run in the order their children's slots were given out
            p, at = todo.popleft()
            if isinstance(p, Var):
                if p.name in slot:
                    match.append((M_SAME, at, slot[p.name]))
                else:
                    slot[p.name] = at
            elif isinstance(p, Lit):
                match.append((M_LIT, at, p.value))
            else:
                assert isinstance(p, App)  # the transducer refuses computed literals in sources
                match.append((M_APP, at, p.op))
                todo.extend((arg, size + j) for j, arg in enumerate(p.args))
                size += len(p.args)
        self.match = tuple(match)

        code: list[tuple] = []
        seen: set[PatternExpr] = set()
        register: dict[PatternExpr, int] = {}

        def where(expr: PatternExpr) -> int:
            return slot[expr.name] if isinstance(expr, Var) else register[expr]

        def evaluate(expr: PatternExpr) -> int:
            nonlocal size
            for sub in fresh_subexpressions(expr, seen):
                if isinstance(sub, Lit):
                    code.append((I_LIT, sub.value))
                elif isinstance(sub, Computed):
                    code.append((I_COMPUTED, sub.expr, tuple((v, slot[v]) for v in dict.fromkeys(variables(sub.expr)))))
                else:
                    assert isinstance(sub, App)
                    registers = tuple(map(where, sub.args))
                    if sub.op in defined:
                        code.append((I_CALL, sub.op, registers, (rule.index, sub) not in untracked))
                    else:
                        code.append((I_CONS, sub.op, registers))
                register[sub] = size
                size += 1
            return where(expr)

        for c in rule.constraints:
            if isinstance(c, IsConst):
                code.append((I_ISCONST, slot[c.var.name]))
            elif isinstance(c, Compare):
                code.append((I_COMPARE, c.op, *(slot[s.name] if isinstance(s, Var) else s for s in (c.left, c.right))))
            else:
                assert isinstance(c, TermCondition)
                code.append((I_ENTER,))
                left = evaluate(c.left)
                code.append((I_COND, left, evaluate(c.right), c.equal))
        code.append((I_FIRE,))
        self.result = evaluate(rule.target)
        self.code = tuple(code)


class Interpreter:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        by_root = ruleset.rules_by_root()
        defined = set(by_root)
        untracked = untracked_calls(ruleset)
        self._plans = {op: tuple(_Plan(rule, defined, untracked) for rule in rules) for op, rules in by_root.items()}
        self._memoised = memoised_ops(ruleset)
        self._tracked = tracked_ops(ruleset)

    def rewrite(self, graph: TermGraph, roots: list[int], fuel: int = DEFAULT_FUEL,
                max_memory: int | None = None) -> RewriteResult:
        """max_memory: bytes the graph may grow to, estimated from its nodes (0: no cap); None takes
        FARM_MAX_MEMORY or its default. Past it, ArenaOutOfMemory."""
        cap = max_memory_from_env() if max_memory is None else max_memory
        run = _Run(self, graph, check_fuel(fuel), cap)
        outcomes: list[int | NonTermination] = []
        steps = []
        for number, root in enumerate(roots, 1):
            run.steps, run.last_rule, run.term, run.conditions = 0, "", number, 1
            try:
                outcomes.append(run.normalize(root))
            except NonTermination as exc:
                run.abandon()
                outcomes.append(exc)
            steps.append(run.steps)
        return RewriteResult(graph, outcomes, run.firings, "interpreter", steps)


class _Run:
    """One `rewrite`: the memo, firing counts and input normal forms are shared by its roots."""

    def __init__(self, interp: Interpreter, graph: TermGraph, fuel: int, cap: int) -> None:
        self.plans = interp._plans
        self.memoised = interp._memoised
        self.tracked = interp._tracked
        self.g = graph
        self.fuel = fuel
        self.cap = cap
        self.term = 0  # which root (from 1), for messages
        self.steps = 0
        self.last_rule = ""
        self.conditions = 1  # condition depth: 1 for a root, one more while a condition's sides are evaluated
        self.firings = [0] * len(interp.ruleset.rules)
        self.nf: dict[int, int] = {}  # input node -> its normal form
        self.memo: dict[Request, int] = {}
        self.calls: list[Attempt] = []  # the calls in progress, innermost last
        # each call's key: in the memo (True), in the tracked calls in progress (False), or None
        self.keys: list[tuple[Request, bool] | None] = []
        self.active: set[Request] = set()  # tracked calls in progress
        self.finished = 0  # memo entries that hold a normal form

    def normalize(self, root: int) -> int:
        """The input term's normal form: children first, left to right, each shared node once; a node of a
        defined operator calls it. An explicit stack of (node, next child): terms nest a million deep."""
        g, nf, plans = self.g, self.nf, self.plans
        names = g.signature.names
        nodes, nexts = [root], [0]
        while nodes:
            node = nodes[-1]
            if node in nf:
                nodes.pop()
                nexts.pop()
                continue
            op = g.ops[node]
            if op == LIT:
                nf[node] = node
                continue
            kids = g.kids(node)
            k = nexts[-1]
            while k < len(kids) and kids[k] in nf:
                k += 1
            if k < len(kids):
                nexts[-1] = k + 1
                nodes.append(kids[k])
                nexts.append(0)
                continue
            args = tuple([nf[kid] for kid in kids])
            name = names[op]
            nf[node] = self.call(name, args) if name in plans else g.app(op, args)
        return nf[root]

    def call(self, op: str, args: tuple[int, ...]) -> int:
        """CALL op(args) to its normal form. The calls it makes are frames of `self.calls`, driven here: each
        yields the call it needs and is sent the result."""
        calls, keys, memo, memoised = self.calls, self.keys, self.memo, self.memoised
        made: Call | None = (op, args, True)
        value: int | None = None
        while True:
            if made is not None:
                if len(calls) >= MAX_CALL_DEPTH:
                    raise calls_error(self.last_rule, self.steps)
                key: tuple[Request, bool] | None = None
                request: Request = made[:2]
                known = None
                if made[2] and made[0] in self.tracked:
                    if request in self.active:
                        raise cycle_error(self.steps, self.last_rule)
                    self.active.add(request)
                    key = (request, False)
                elif request[0] in memoised:
                    known = memo.get(request)
                    if known == IN_PROGRESS:
                        raise cycle_error(self.steps, self.last_rule)
                    if known is not None:
                        if not calls:
                            return known
                        value = known
                    else:
                        remembered = self._remember(request)
                        key = None if remembered is None else (remembered, True)
                if known is None:
                    if self.cap:
                        self._check_memory()
                    calls.append(self._attempt(*request))
                    keys.append(key)
                    value = None  # starts the generator
            try:
                made = calls[-1].send(value)  # type: ignore[arg-type]
            except StopIteration as returned:
                calls.pop()
                value = returned.value
                done = keys.pop()
                if done is not None:
                    if done[1]:
                        memo[done[0]] = value
                        self.finished += 1
                    else:
                        self.active.discard(done[0])
                if not calls:
                    return value
                made = None

    def _remember(self, key: Request) -> Request | None:
        """Enter a call in the memo as in progress; when the memo is full, drop its finished entries first, and
        when every entry is in progress the call is not remembered (None)."""
        memo = self.memo
        if len(memo) >= MAX_MEMO_ENTRIES:
            if self.finished:  # counted, so that a memo full of calls in progress is not scanned on every call
                for finished in [k for k, v in memo.items() if v != IN_PROGRESS]:
                    del memo[finished]
                self.finished = 0
            if len(memo) >= MAX_MEMO_ENTRIES:
                return None
        memo[key] = IN_PROGRESS
        return key

    def abandon(self) -> None:
        """After a root's error: drop its calls in progress and their memo entries (finished ones stay)."""
        for key in self.keys:
            if key is not None and key[1]:
                del self.memo[key[0]]
        self.keys.clear()
        self.active.clear()
        self.calls.clear()
        self.conditions = 1

    def _check_memory(self) -> None:
        g = self.g
        held = len(g.ops) * BYTES_PER_NODE + len(g.kid_ids) * BYTES_PER_CHILD + len(self.calls) * BYTES_PER_CALL
        if held > self.cap:
            raise memory_error(self.cap, held, f"while rewriting term {self.term}")

    def _attempt(self, op: str, args: tuple[int, ...]) -> Attempt:
        """The call op(args): the first rule, in firing order, that matches and whose guards hold fires and
        its target is the result; if none does, op(args) itself is."""
        g = self.g
        ops, vals, names = g.ops, g.vals, g.signature.names
        for plan in self.plans[op]:
            regs = list(args)
            for ins in plan.match:
                node = regs[ins[1]]
                if ins[0] == M_APP:
                    if ops[node] == LIT or names[ops[node]] != ins[2]:
                        break
                    regs.extend(g.kids(node))
                elif ins[0] == M_LIT:
                    if ops[node] != LIT or vals[node] != ins[2]:
                        break
                elif node != regs[ins[2]]:
                    break
            else:
                for ins in plan.code:
                    kind = ins[0]
                    if kind == I_CALL:
                        regs.append((yield ins[1], tuple([regs[i] for i in ins[2]]), ins[3]))
                    elif kind == I_CONS:
                        regs.append(g.app_named(ins[1], [regs[i] for i in ins[2]]))
                    elif kind == I_LIT:
                        regs.append(g.lit(ins[1]))
                    elif kind == I_COMPUTED:
                        regs.append(g.lit(eval_lit(ins[1], {v: vals[regs[r]] for v, r in ins[2]})))
                    elif kind == I_FIRE:
                        self.firings[plan.index] += 1
                        self.steps += 1
                        self.last_rule = plan.name
                        if self.steps > self.fuel:
                            raise fuel_error(self.fuel, plan.name)
                    elif kind == I_ISCONST:
                        if ops[regs[ins[1]]] != LIT:
                            break
                    elif kind == I_COMPARE:
                        a, b = (regs[s] if isinstance(s, int) else g.lit(s.value) for s in ins[2:])
                        if ins[1] in ("==", "!="):
                            if (a == b) != (ins[1] == "=="):
                                break
                        elif ops[a] != LIT or ops[b] != LIT or not compare(ins[1], vals[a], vals[b]):
                            break
                    elif kind == I_ENTER:
                        if self.conditions + 1 > MAX_CONDITION_DEPTH:
                            raise depth_error(self.last_rule, self.steps)
                        self.conditions += 1
                    else:
                        assert kind == I_COND
                        self.conditions -= 1
                        if (regs[ins[1]] == regs[ins[2]]) != ins[3]:
                            break
                else:
                    return regs[plan.result]
        return g.app_named(op, args)
