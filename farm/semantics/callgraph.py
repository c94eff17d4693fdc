"""Which operators' calls are memoised, and the order a rule evaluates its expressions in.

Rewriting is compiled as calls (docs/rules.md, "Semantics"): a target that applies a defined operator calls
it. Every engine (interpreter, LLVM, Rust) takes both decisions below from here, so they agree step for step.
"""

from __future__ import annotations

from collections.abc import Container, Iterator

from farm.lang.rules import App, PatternExpr, TermCondition, Var
from farm.lang.transduce import RewriteRule, RuleSet

Occurrence = tuple[int, ...]  # path of argument/child indices from a call's arguments: (i,) is argument i


def fresh_subexpressions(expr: PatternExpr, seen: set[PatternExpr]) -> list[PatternExpr]:
    """The sub-expressions of `expr` that evaluating it computes, innermost and left to right, each once:
    those already in `seen` (evaluated earlier in the same rule) are reused and skipped. Variables are
    bound, not computed. Adds what it returns to `seen`. No recursion: targets may nest thousands deep."""
    out: list[PatternExpr] = []
    stack: list[tuple[PatternExpr, bool]] = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if isinstance(node, Var) or node in seen:
            continue
        if expanded or not isinstance(node, App):
            seen.add(node)
            out.append(node)
            continue
        stack.append((node, True))
        stack.extend((arg, False) for arg in reversed(node.args))
    return out


def rule_expressions(rule: RewriteRule) -> Iterator[PatternExpr]:
    """What a rule evaluates when it is tried and fires, in order: each condition's sides, then the target."""
    for constraint in rule.constraints:
        if isinstance(constraint, TermCondition):
            yield constraint.left
            yield constraint.right
    yield rule.target


def _applications(expr: PatternExpr) -> Iterator[App]:
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, App):
            yield node
            stack.extend(node.args)  # type: ignore[arg-type]


def variable_occurrences(source: App) -> dict[str, list[Occurrence]]:
    """Where each variable of a source pattern is bound, relative to the call's arguments."""
    out: dict[str, list[Occurrence]] = {}
    stack: list[tuple[PatternExpr, Occurrence]] = [(arg, (i,)) for i, arg in enumerate(source.args)]
    while stack:
        node, occ = stack.pop()
        if isinstance(node, Var):
            out.setdefault(node.name, []).append(occ)
        elif isinstance(node, App):
            stack.extend((arg, occ + (j,)) for j, arg in enumerate(node.args))
    return out


def _inside(rule: RewriteRule, arg: PatternExpr, position: int) -> list[Occurrence]:
    """Where `arg`, a variable, is bound inside argument `position` of the rule's source ([] otherwise)."""
    if not isinstance(arg, Var):
        return []
    return [occ for occ in variable_occurrences(rule.source).get(arg.name, []) if occ[0] == position]


def _descends(rule: RewriteRule, call: App) -> bool:
    """The call's arguments are the rule's own variables, each bound inside the same argument position of the
    source and one strictly inside: every such call is on a smaller term, so calls cannot repeat or loop."""
    strictly = False
    for i, arg in enumerate(call.args):
        inside = _inside(rule, arg, i)
        if not inside:
            return False
        strictly = strictly or any(len(occ) > 1 for occ in inside)
    return strictly


def _shrinks(rule: RewriteRule, call: App, position: int) -> bool:
    """The call passes, at `position`, a variable bound strictly inside that argument of its rule's source."""
    return any(len(occ) > 1 for occ in _inside(rule, call.args[position], position))


def _shrinks_at(position: int, self_calls: list[tuple[RewriteRule, App]]) -> bool:
    """Every call shrinks the argument at `position` (whatever the others do: an accumulator grows), so
    calls cannot repeat or loop."""
    return all(_shrinks(rule, call, position) for rule, call in self_calls)


def _cannot_loop(self_calls: list[tuple[RewriteRule, App]]) -> bool:
    """Direct recursion that is structural: on smaller arguments (plus, append, reverse) or on an argument that
    shrinks (a list walked with an accumulator, a counted loop)."""
    if all(_descends(rule, call) for rule, call in self_calls):
        return True
    arity = len(self_calls[0][1].args)
    return any(_shrinks_at(i, self_calls) for i in range(arity))


def _rebuilds(expr: PatternExpr, pattern: PatternExpr, defined: Container[str]) -> bool:
    """`expr` is the source argument `pattern` itself, built again of constructors: it evaluates to that very
    argument (maximal sharing)."""
    return expr == pattern and not any(app.op in defined for app in _applications(expr))


def _kept_or_shrunk(rule: RewriteRule, call: App, position: int, defined: Container[str]) -> bool:
    """The call passes, at `position`, that argument of the rule's source or a part of it."""
    arg = call.args[position]
    return bool(_inside(rule, arg, position)) or _rebuilds(arg, rule.source.args[position], defined)


def _untracked_self_calls(self_calls: list[tuple[RewriteRule, App]], defined: Container[str]) \
        -> set[tuple[int, App]]:
    """Of a tracked operator's calls to itself, those that need not be tracked: where every call keeps an
    argument or passes a part of it, a loop can only repeat calls that keep it (one that passes a part has a
    smaller argument, which no later call makes larger again). So the calls that pass a strict part are not
    tracked, and a loop entered through one is caught one call later, when its next call repeats."""
    arity = len(self_calls[0][1].args)
    for i in range(arity):
        if all(_kept_or_shrunk(rule, call, i, defined) for rule, call in self_calls):
            found = {(rule.index, call) for rule, call in self_calls if _shrinks(rule, call, i)}
            if found:
                return found
    return set()


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm with an explicit stack (a ruleset may chain thousands of operators)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            nxt = next(successors, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


Policy = tuple[frozenset[str], frozenset[str], frozenset[tuple[int, App]]]


def _policy(ruleset: RuleSet) -> Policy:
    """(tracked, memoised, untracked calls): operators whose calls may loop, and among them those whose calls
    branch; the calls (rule index, application) of a tracked operator to itself that are not tracked."""
    by_root = ruleset.rules_by_root()
    calls = {op: [(rule, app) for rule in rules for expr in rule_expressions(rule) for app in _applications(expr)
                  if app.op in by_root] for op, rules in by_root.items()}
    graph = {op: {app.op for _, app in found} for op, found in calls.items()}
    tracked: set[str] = set()
    memoised: set[str] = set()
    untracked: set[tuple[int, App]] = set()
    for component in _strongly_connected(graph):
        members = set(component)
        op = component[0]
        if len(component) == 1 and op not in graph[op]:
            continue  # not recursive: its calls cannot repeat within themselves
        inner = {id(rule): 0 for member in component for rule in by_root[member]}
        for member in component:
            for rule, app in calls[member]:
                inner[id(rule)] += app.op in members
        if max(inner.values()) > 1:
            memoised.update(component)  # tree recursion: repeated calls are where remembering pays
        elif len(component) > 1:
            tracked.update(component)  # mutual recursion: it may loop
        else:
            self_calls = [(rule, app) for rule, app in calls[op] if app.op == op]
            if not _cannot_loop(self_calls):
                tracked.add(op)  # not structural recursion: it may loop
                untracked |= _untracked_self_calls(self_calls, by_root)
    return frozenset(tracked), frozenset(memoised), frozenset(untracked)


_POLICY: dict[str, Policy] = {}


def _cached_policy(ruleset: RuleSet) -> Policy:
    key = ruleset.fingerprint()
    found = _POLICY.get(key)
    if found is None:
        if len(_POLICY) > 256:
            _POLICY.clear()
        found = _POLICY[key] = _policy(ruleset)
    return found


def memoised_ops(ruleset: RuleSet) -> frozenset[str]:
    """Operators whose calls the memo remembers (docs/rules.md, "Memo"): those of a recursion in which some
    rule calls back more than once (fib, tak, an evaluator over a shared term)."""
    return _cached_policy(ruleset)[1]


def tracked_ops(ruleset: RuleSet) -> frozenset[str]:
    """Operators, besides the memoised ones, whose calls in progress are tracked to catch a loop
    (docs/rules.md, "Memo"): the other recursive ones, except those whose only recursion is direct and
    structural (each call on smaller arguments, or with one argument that shrinks on every call)."""
    return _cached_policy(ruleset)[0]


def untracked_calls(ruleset: RuleSet) -> frozenset[tuple[int, App]]:
    """The calls (rule index, application) a tracked operator's rules make to it that are not tracked
    (docs/rules.md, "Memo"): in `dv(s(x), z, p) => dv(s(x), p, p)`, `dv(s(x), s(k), p) => dv(x, k, p)` every
    call keeps the first argument or passes a part of it, so only the first kind is tracked."""
    return _cached_policy(ruleset)[2]


__all__ = ["Occurrence", "fresh_subexpressions", "memoised_ops", "rule_expressions", "tracked_ops",
           "untracked_calls", "variable_occurrences"]
