"""The match program of a defined operator: its rules lowered once, backend-neutral, in execution order.

farm/compiler/matchtree.py decides which rule is tried where (a decision tree); this module says what each step
does, as a small typed program that the LLVM (farm/compiler/codegen/operators.py) and Rust
(farm/compiler/codegen/rust.py) backends only print, as Cranelift ISLE's backends print its lowered decision
program. Nodes of the program:

  Switch    on the node at an occurrence: its literal value, or its operator; an operator's case binds the
            node's children (occurrence + (j,)) before its body
  Attempt   one rule at a decision-tree leaf: its steps in order, and `otherwise` (the rules after it) where a
            Test of its steps fails
  Chain     try `first`; where it fails, `rest` (which reads only the arguments)
  NoMatch   no rule applies: the enclosing Chain's rest, or at the top the call's own node

An attempt's steps: Test (the leaf's equalities, then each guard), EnterCondition / LeaveCondition around
the sides of a conditional-rewriting condition, Eval (call a defined operator, build a constructor node, a
literal or a computed literal), Fire (count the step), Return. Values are Node(occurrence), a node the
pattern matched (an argument at (i,)), or Temp(k), the k-th value the attempt evaluated. Which calls are
memoised or tracked and the order of evaluation come from farm/semantics/callgraph.py, as for every engine.

What stays in a backend: where values live (LLVM frame slots, reloading nodes after a call that may collect;
Rust locals), the memo and tracking around a call, interning, the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.compiler import matchtree
from farm.compiler.matchtree import NODE_BUDGET, Occurrence, build_tree
from farm.lang.rules import (
    App,
    BinOp,
    Compare,
    Computed,
    Constraint,
    IsConst,
    Lit,
    LitExpr,
    Neg,
    PatternExpr,
    TermCondition,
    Var,
    fold,
)
from farm.lang.transduce import RewriteRule, RuleSet
from farm.semantics.callgraph import (
    fresh_subexpressions,
    memoised_ops,
    tracked_ops,
    untracked_calls,
    variable_occurrences,
)
from farm.trampoline import Step, run

# ---- values ----


@dataclass(frozen=True)
class Node:
    """The node the pattern matched at `occurrence`: (i,) is argument i, (i, j) its child j, and so on."""

    occurrence: Occurrence


@dataclass(frozen=True)
class Temp:
    """The value of the attempt's `index`-th Eval."""

    index: int


Value = Node | Temp

# ---- conditions ----


@dataclass(frozen=True)
class Same:
    """The two values are one node: equal terms, by maximal sharing."""

    left: Value
    right: Value


@dataclass(frozen=True)
class IsLit:
    value: Value


@dataclass(frozen=True)
class LitCompare:
    """Every side that is a Value is a literal node, and the signed comparison `op` of the literals holds."""

    op: str
    left: Value | int
    right: Value | int


Condition = Same | IsLit | LitCompare

# ---- computed literals: straight-line, each operand the index of an earlier item ----


@dataclass(frozen=True)
class Const:
    value: int


@dataclass(frozen=True)
class Payload:
    """The literal value held by a node."""

    value: Value


@dataclass(frozen=True)
class Negate:
    operand: int


@dataclass(frozen=True)
class Binary:
    """Wrapping two's-complement i64 arithmetic (rules.ARITH_OPS); shifts count modulo 64."""

    op: str
    left: int
    right: int


Arith = Const | Payload | Negate | Binary

# ---- expressions ----


@dataclass(frozen=True)
class Call:
    """The normal form of a defined operator applied to normal forms; `tracked` False for a call
    farm/semantics/callgraph.py leaves untracked (the callee's flag)."""

    op: str
    args: tuple[Value, ...]
    tracked: bool


@dataclass(frozen=True)
class Build:
    """The shared node of a constructor over normal forms."""

    op: str
    args: tuple[Value, ...]


@dataclass(frozen=True)
class MakeLit:
    value: int


@dataclass(frozen=True)
class Compute:
    """A literal computed from bound literals: the value of the last item."""

    items: tuple[Arith, ...]


Expr = Call | Build | MakeLit | Compute

# ---- steps of an attempt ----


@dataclass(frozen=True)
class Test:
    """The rule goes on where `condition` is `holds`, else on with the attempt's `otherwise`."""

    condition: Condition
    holds: bool = True


@dataclass(frozen=True)
class EnterCondition:
    """A condition's sides are evaluated one level deeper (within MAX_CONDITION_DEPTH)."""


@dataclass(frozen=True)
class LeaveCondition:
    pass


@dataclass(frozen=True)
class Eval:
    """Temp `dest` := `expr`. Every Eval may allocate, so a backend's collector may run in it. `kept`: which of
    the attempt's kept values this one is (numbered from 0), when a later step past another Eval reads it, so a
    backend keeps it where a collection sees it; None when only steps up to the next Eval read it (that Eval
    reads its arguments before it allocates)."""

    dest: Temp
    expr: Expr
    kept: int | None = None


@dataclass(frozen=True)
class Fire:
    """The rule fires: one step of fuel, one count of its firing counter."""

    rule: int


@dataclass(frozen=True)
class Return:
    value: Value


Instruction = Test | EnterCondition | LeaveCondition | Eval | Fire | Return

# ---- control ----


@dataclass
class NoMatch:
    pass


@dataclass
class OpCase:
    op: str
    children: tuple[Occurrence, ...]  # bound before the body: the node's children
    body: Program


@dataclass
class Switch:
    occurrence: Occurrence
    literals: list[tuple[int, Program]]
    operators: list[OpCase]
    default: Program


@dataclass
class Attempt:
    rule: RewriteRule
    steps: tuple[Instruction, ...]  # ends with Return
    otherwise: Program


@dataclass
class Chain:
    first: Program
    rest: Program


Program = NoMatch | Switch | Attempt | Chain


@dataclass
class OperatorProgram:
    """The function of one defined operator: takes its arguments in normal form, returns the normal form."""

    op: str
    arity: int
    memoised: bool
    tracked: bool
    flagged: bool  # some calls of it are not tracked: its function takes whether this call is
    first_rule: int  # index of its first rule in firing order
    temps: int  # the most values one attempt keeps (Eval.kept)
    body: Program  # NoMatch at the top: the call's own node is its normal form


class Lowering:
    """Lowers the rules of a ruleset's defined operators, one operator at a time."""

    def __init__(self, ruleset: RuleSet, tree_budget: int = NODE_BUDGET) -> None:
        self.ruleset = ruleset
        self.tree_budget = tree_budget
        self.arities = dict(ruleset.signature)
        self.by_root = ruleset.rules_by_root()
        self.memoised = memoised_ops(ruleset)
        self.tracked = tracked_ops(ruleset)
        self.untracked = untracked_calls(ruleset)
        self.flagged = frozenset(call.op for _, call in self.untracked)
        self._rules: dict[tuple[int, tuple[tuple[str, Occurrence], ...]], tuple[Instruction, ...]] = {}

    def operator(self, op_name: str) -> OperatorProgram:
        rules = self.by_root[op_name]
        kept = [self._kept(rule) for rule in rules]
        body = run(self._program(build_tree(rules, self.tree_budget), op_name))
        return OperatorProgram(op_name, self.arities[op_name], op_name in self.memoised, op_name in self.tracked,
                               op_name in self.flagged, rules[0].index, max(kept), body)

    def _kept(self, rule: RewriteRule) -> int:
        """The values the rule's attempt keeps (Eval.kept), whatever leaf it is tried at."""
        bindings = {name: occs[0] for name, occs in variable_occurrences(rule.source).items()}
        steps = self._rule_steps(rule, bindings)  # the leaves of a linear rule bind it the same way
        return sum(isinstance(step, Eval) and step.kept is not None for step in steps)

    def _program(self, tree: matchtree.Tree, op_name: str) -> Step[Program]:
        """A trampoline step (farm/trampoline.py): trees are as deep as patterns are large."""
        if isinstance(tree, matchtree.Fail):
            return NoMatch()
        if isinstance(tree, matchtree.Chain):
            return Chain((yield self._program(tree.first, op_name)), (yield self._program(tree.rest, op_name)))
        if isinstance(tree, matchtree.Switch) and tree.occurrence == ():
            # The root is this operator's call: only its own case can apply.
            own = ("app", op_name, self.arities[op_name])
            found = [sub for head, sub in tree.cases if head == own]
            return (yield self._program(found[0], op_name)) if found else NoMatch()
        if isinstance(tree, matchtree.Switch):
            return (yield self._switch(tree, op_name))
        assert isinstance(tree, matchtree.Leaf)
        tests = tuple(Test(Same(Node(x), Node(y))) for x, y in tree.equalities)
        otherwise = NoMatch() if tree.otherwise is None else (yield self._program(tree.otherwise, op_name))
        return Attempt(tree.rule, tests + self._rule_steps(tree.rule, tree.bindings), otherwise)

    def _switch(self, tree: matchtree.Switch, op_name: str) -> Step[Program]:
        literals: list[tuple[int, Program]] = []
        operators: list[OpCase] = []
        for (kind, label, arity), sub in tree.cases:
            body = yield self._program(sub, op_name)
            if kind == "lit":
                literals.append((int(label), body))  # type: ignore[call-overload]
            else:
                children = tuple(tree.occurrence + (j,) for j in range(arity))
                operators.append(OpCase(str(label), children, body))
        return Switch(tree.occurrence, literals, operators, (yield self._program(tree.default, op_name)))

    def _rule_steps(self, rule: RewriteRule, bindings: dict[str, Occurrence]) -> tuple[Instruction, ...]:
        """A rule's guards, firing and target, lowered once per way its variables are bound."""
        key = (rule.index, tuple(sorted(bindings.items())))
        found = self._rules.get(key)
        if found is None:
            found = self._rules[key] = _RuleLowering(rule, bindings, self.by_root, self.untracked).steps()
        return found


class _RuleLowering:
    """One rule's steps: each sub-expression evaluated once, innermost, left to right (farm/semantics/callgraph.py)."""

    def __init__(self, rule: RewriteRule, bindings: dict[str, Occurrence], defined: dict[str, list[RewriteRule]],
                 untracked: frozenset[tuple[int, App]]) -> None:
        self.rule, self.bindings = rule, bindings
        self.defined, self.untracked = defined, untracked
        self.out: list[Instruction] = []
        self.seen: set[PatternExpr] = set()
        self.values: dict[PatternExpr, Temp] = {}

    def steps(self) -> tuple[Instruction, ...]:
        for constraint in self.rule.constraints:
            self._guard(constraint)
        self.out.append(Fire(self.rule.index))
        target = self.rule.target
        units = fresh_subexpressions(target, self.seen)
        for unit in units:
            self._eval(unit)
        self.out.append(Return(self.value(target)))
        return keep_across_evals(self.out)

    def value(self, expr: PatternExpr | LitExpr) -> Value:
        if isinstance(expr, Var):
            return Node(self.bindings[expr.name])
        return self.values[expr]  # type: ignore[index]

    def _evaluate(self, expr: PatternExpr) -> Value:
        for unit in fresh_subexpressions(expr, self.seen):
            self._eval(unit)
        return self.value(expr)

    def _eval(self, unit: PatternExpr) -> None:
        temp = self.values[unit] = Temp(len(self.values))
        self.out.append(Eval(temp, self._expr(unit)))

    def _expr(self, unit: PatternExpr) -> Expr:
        if isinstance(unit, Lit):
            return MakeLit(unit.value)
        if isinstance(unit, Computed):
            return Compute(self._arith(unit.expr))
        assert isinstance(unit, App)
        args = tuple(self.value(arg) for arg in unit.args)
        if unit.op in self.defined:
            return Call(unit.op, args, (self.rule.index, unit) not in self.untracked)
        return Build(unit.op, args)

    def _arith(self, expr: LitExpr) -> tuple[Arith, ...]:
        items: list[Arith] = []

        def item(node: PatternExpr | LitExpr, operands: list[int]) -> int:
            if isinstance(node, Lit):
                items.append(Const(node.value))
            elif isinstance(node, Var):
                items.append(Payload(self.value(node)))
            elif isinstance(node, Neg):
                items.append(Negate(operands[0]))
            else:
                assert isinstance(node, BinOp)
                items.append(Binary(node.op, operands[0], operands[1]))
            return len(items) - 1

        fold(expr, item)  # type: ignore[arg-type]
        return tuple(items)

    def _guard(self, c: Constraint) -> None:
        if isinstance(c, IsConst):
            self.out.append(Test(IsLit(self.value(c.var))))
        elif isinstance(c, Compare) and c.op in ("==", "!="):
            self.out.append(Test(self._same_term(c.left, c.right), c.op == "=="))
        elif isinstance(c, Compare):
            self.out.append(Test(LitCompare(c.op, self._side(c.left), self._side(c.right))))
        else:
            assert isinstance(c, TermCondition)
            self.out.append(EnterCondition())
            left, right = self._evaluate(c.left), self._evaluate(c.right)
            self.out.append(LeaveCondition())
            self.out.append(Test(Same(left, right), c.equal))

    def _side(self, side: Var | Lit) -> Value | int:
        return side.value if isinstance(side, Lit) else self.value(side)

    def _same_term(self, left: Var | Lit, right: Var | Lit) -> Condition:
        """Term equality without building anything: maximal sharing makes it node equality; a literal is equal
        to a node that is that literal."""
        if isinstance(left, Var) and isinstance(right, Var):
            return Same(self.value(left), self.value(right))
        return LitCompare("==", self._side(left), self._side(right))


def keep_across_evals(steps: list[Instruction]) -> tuple[Instruction, ...]:
    """The steps, each Eval whose value is read past the next Eval numbered as kept (Eval.kept)."""
    last_read: dict[int, int] = {}
    for at, step in enumerate(steps):
        for temp in _temps_read(step):
            last_read[temp] = at
    evals = [at for at, step in enumerate(steps) if isinstance(step, Eval)]
    kept = 0
    out: list[Instruction] = []
    for at, step in enumerate(steps):
        if isinstance(step, Eval):
            next_eval = min((e for e in evals if e > at), default=len(steps))
            if last_read.get(step.dest.index, at) > next_eval:
                step = Eval(step.dest, step.expr, kept)
                kept += 1
        out.append(step)
    return tuple(out)


def _temps_read(step: Instruction) -> list[int]:
    values: list[Value | int] = []
    if isinstance(step, Eval) and isinstance(step.expr, (Call, Build)):
        values = list(step.expr.args)
    elif isinstance(step, Eval) and isinstance(step.expr, Compute):
        values = [item.value for item in step.expr.items if isinstance(item, Payload)]
    elif isinstance(step, Test):
        condition = step.condition
        values = [condition.value] if isinstance(condition, IsLit) else [condition.left, condition.right]
    elif isinstance(step, Return):
        values = [step.value]
    return [value.index for value in values if isinstance(value, Temp)]


__all__ = ["Arith", "Attempt", "Binary", "Build", "Call", "Chain", "Compute", "Condition", "Const",
           "EnterCondition", "Eval", "Expr", "Fire", "Instruction", "IsLit", "LeaveCondition", "LitCompare",
           "Lowering", "MakeLit", "Negate", "NoMatch", "Node", "OpCase", "OperatorProgram", "Payload", "Program",
           "Return", "Same", "Switch", "Temp", "Test", "Value"]
