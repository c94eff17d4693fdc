"""Rust source for a ruleset: rewriting compiled as calls (docs/rules.md, "Semantics").

Each defined operator becomes `fn norm_<k>(rt: &mut Runtime, a0: Id, ..) -> Result<Id, Err>`: it takes
its arguments in normal form, picks the first rule in firing order with the decision tree of
farm/matchtree.py (matched directly on hash-consed nodes) and returns the normal form: the target evaluated
innermost, each defined operator in it called, each constructor a node, a redex never built. Which calls are
memoised, which are tracked while in progress (to catch a loop) and the order a rule evaluates its
sub-expressions in come from farm/callgraph.py, as for every engine, so the Rust rewriter takes the
interpreter's steps.

The output is one self-contained file that `rustc` accepts, with no crates. With `with_main=True` it also
has a `main` that reads a term graph on stdin (the format of `harness_input`) and prints normal forms, steps,
errors and firing counts (`harness_output`), so that tests can run it against the interpreter. Rewriting runs
on a thread with a large stack (STACK_BYTES): calls nest as deep as the rules recurse.
Rule and operator names appear only in comments and string literals, escaped.
"""

from __future__ import annotations

import itertools
import re

from farm.callgraph import fresh_subexpressions, memoised_ops, tracked_ops, untracked_calls
from farm.matchtree import NODE_BUDGET, Chain, Fail, Leaf, Occurrence, Switch, Tree, build_tree
from farm.rules import (
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
)
from farm.semantics import MAX_CALL_DEPTH, MAX_CONDITION_DEPTH, MAX_MEMO_ENTRIES
from farm.terms import TermGraph
from farm.trampoline import Step, run
from farm.transduce import RewriteRule, RuleSet

# The harness's error codes (the native ABI's, plus -7), by the name of the error the interpreter raises.
ERROR_NAMES = {-2: "FuelExhausted", -3: "RewriteCycle", -6: "ConditionsTooDeep", -7: "CallsTooDeep"}

RUNTIME = r"""
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

pub type Id = u32;
pub const LIT: i32 = -1;
const EMPTY: Id = u32::MAX;
/// The stack of the thread that rewrites: calls nest as deep as the rules recurse (MAX_CALL_DEPTH).
pub const STACK_BYTES: usize = 1 << 30;
/// Stack kept free below the deepest call: one rule's frame, hashing, allocation.
const STACK_RESERVE: usize = 1 << 20;

/// Why one root has no normal form; `code` is the harness's number for it.
#[derive(Clone, Copy, Debug)]
pub enum Err { Fuel, Cycle, ConditionsTooDeep, CallsTooDeep }

impl Err {
    pub fn code(self) -> i64 {
        match self { Err::Fuel => -2, Err::Cycle => -3, Err::ConditionsTooDeep => -6, Err::CallsTooDeep => -7 }
    }
}

/// FxHash (rustc's): keys are small integers, which SipHash would spend most of a call on.
#[derive(Default)]
pub struct Fx(u64);

impl Fx {
    fn add(&mut self, word: u64) { self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95); }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 { self.0 }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) { self.add(n as u64); }
    fn write_u64(&mut self, n: u64) { self.add(n); }
    fn write_usize(&mut self, n: usize) { self.add(n as u64); }
}

/// A memoised or tracked call: (operator, arguments padded with 0 to MEMO_WIDTH).
pub type MemoKey = (i32, [Id; MEMO_WIDTH]);

struct Node { op: i32, arity: u32, payload: i64, hash: u64 }

/// Maximally shared nodes; the memo of memoised calls (`finished`, and `running`: in progress); the tracked
/// calls in progress (`tracking`, unbounded); per root, steps, fuel, last rule, condition level and call
/// depth; firing counters.
pub struct Runtime {
    nodes: Vec<Node>,
    kids: Vec<Id>,
    slots: Vec<Id>,
    finished: HashMap<MemoKey, Id, BuildHasherDefault<Fx>>,
    running: HashSet<MemoKey, BuildHasherDefault<Fx>>,
    tracking: HashSet<MemoKey, BuildHasherDefault<Fx>>,
    input_nf: Vec<Id>,
    pub steps: u64,
    pub fuel: u64,
    pub last_rule: i64,
    pub counters: Vec<u64>,
    level: usize,
    depth: usize,
    stack_limit: usize,
}

/// An address in the caller's frame: the stack grows down from where rewriting started.
#[inline(always)]
fn stack_here() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

fn node_hash(op: i32, value: i64, kids: &[Id]) -> u64 {
    let mut h = Fx::default();
    h.add(op as u64);
    h.add(value as u64);
    for &k in kids { h.add(k as u64); }
    let x = h.finish();
    (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd) ^ (x >> 29)
}

impl Runtime {
    /// A runtime for the calling thread, which has `stack_bytes` of stack from here down.
    pub fn new(fuel: u64, stack_bytes: usize) -> Runtime {
        Runtime { nodes: Vec::new(), kids: Vec::new(), slots: vec![EMPTY; 1024], finished: HashMap::default(),
                  running: HashSet::default(), tracking: HashSet::default(),
                  input_nf: Vec::new(), steps: 0, fuel, last_rule: -1, counters: vec![0; RULE_COUNT],
                  level: 0, depth: 0,
                  stack_limit: stack_here().saturating_sub(stack_bytes.saturating_sub(STACK_RESERVE)) }
    }

    fn intern(&mut self, op: i32, value: i64, kids: &[Id]) -> Id {
        let hash = node_hash(op, value, kids);
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let id = self.slots[i];
            if id == EMPTY { break; }
            let n = &self.nodes[id as usize];
            if n.hash == hash && n.op == op && (if op == LIT { n.payload == value } else { self.kids_of(id) == kids }) {
                return id;
            }
            i = (i + 1) & mask;
        }
        let id = self.nodes.len() as Id;
        let payload = if op == LIT { value } else { self.kids.len() as i64 };
        self.kids.extend_from_slice(kids);
        self.nodes.push(Node { op, arity: kids.len() as u32, payload, hash });
        self.slots[i] = id;
        if self.nodes.len() * 2 > self.slots.len() { self.grow(); }
        id
    }

    fn grow(&mut self) {
        let mut slots = vec![EMPTY; self.slots.len() * 2];
        let mask = slots.len() - 1;
        for (id, node) in self.nodes.iter().enumerate() {
            let mut i = node.hash as usize & mask;
            while slots[i] != EMPTY { i = (i + 1) & mask; }
            slots[i] = id as Id;
        }
        self.slots = slots;
    }

    pub fn mk(&mut self, op: i32, kids: &[Id]) -> Id { self.intern(op, 0, kids) }
    pub fn lit(&mut self, value: i64) -> Id { self.intern(LIT, value, &[]) }
    pub fn op(&self, n: Id) -> i32 { self.nodes[n as usize].op }
    pub fn is_lit(&self, n: Id) -> bool { self.op(n) == LIT }
    pub fn val(&self, n: Id) -> i64 { self.nodes[n as usize].payload }
    pub fn kid(&self, n: Id, j: usize) -> Id { self.kids[self.nodes[n as usize].payload as usize + j] }
    pub fn kids_of(&self, n: Id) -> &[Id] {
        let node = &self.nodes[n as usize];
        if node.op == LIT { return &[]; }
        &self.kids[node.payload as usize..node.payload as usize + node.arity as usize]
    }

    /// A call begins: one level deeper, within MAX_CALL_DEPTH and the thread's stack.
    #[inline(always)]
    fn enter(&mut self) -> Result<(), Err> {
        self.depth += 1;
        if self.depth > MAX_CALL_DEPTH || stack_here() < self.stack_limit { return Err(Err::CallsTooDeep); }
        Ok(())
    }

    #[inline(always)]
    fn leave(&mut self) { self.depth -= 1; }

    /// A rule fires: one rewrite step of this root's fuel.
    fn fire(&mut self, rule: usize) -> Result<(), Err> {
        self.counters[rule] += 1;
        self.steps += 1;
        self.last_rule = rule as i64;
        if self.steps > self.fuel { Err(Err::Fuel) } else { Ok(()) }
    }

    /// A condition's sides are evaluated one level deeper than the rule that tries it.
    fn begin_condition(&mut self) -> Result<(), Err> {
        if self.level >= MAX_CONDITION_DEPTH { return Err(Err::ConditionsTooDeep); }
        self.level += 1;
        Ok(())
    }

    fn end_condition(&mut self) { self.level -= 1; }

    /// The normal form of input node `root`, or why it has none; then the memo keeps only finished calls
    /// and no tracked call is in progress.
    pub fn normalize_root(&mut self, root: Id) -> Result<Id, Err> {
        self.steps = 0;
        self.last_rule = -1;
        self.level = 1;
        self.depth = 0;
        if self.input_nf.len() < self.nodes.len() { self.input_nf.resize(self.nodes.len(), EMPTY); }
        let normal = self.normalize_input(root);
        if normal.is_err() { self.running.clear(); self.tracking.clear(); }
        normal
    }

    /// Children first, left to right, each shared input node once; then the node's operator is called.
    fn normalize_input(&mut self, root: Id) -> Result<Id, Err> {
        let mut todo: Vec<(Id, bool)> = vec![(root, false)];
        while let Some((n, ready)) = todo.pop() {
            if self.input_nf[n as usize] != EMPTY { continue; }
            if self.is_lit(n) { self.input_nf[n as usize] = n; continue; }
            if !ready {
                todo.push((n, true));
                todo.extend(self.kids_of(n).iter().rev().map(|&k| (k, false)));
                continue;
            }
            let args: Vec<Id> = self.kids_of(n).iter().map(|&k| self.input_nf[k as usize]).collect();
            let op = self.op(n);
            let normal = call(self, op, &args)?;
            self.input_nf[n as usize] = normal;
        }
        Ok(self.input_nf[root as usize])
    }

    /// `(#op kid ..)` with operator ids, literals in decimal; iterative.
    pub fn to_text(&self, root: Id) -> String {
        let mut out = String::new();
        let mut todo: Vec<(Id, bool)> = vec![(root, false)];
        while let Some((n, close)) = todo.pop() {
            if close { out.push(')'); continue; }
            if !out.is_empty() && !out.ends_with('(') { out.push(' '); }
            if self.is_lit(n) { out.push_str(&self.val(n).to_string()); continue; }
            let kids = self.kids_of(n);
            if kids.is_empty() { out.push_str(&format!("#{}", self.op(n))); continue; }
            out.push_str(&format!("(#{}", self.op(n)));
            todo.push((n, true));
            todo.extend(kids.iter().rev().map(|&c| (c, false)));
        }
        out
    }
}

/// A memoised call: the remembered normal form (no step), RewriteCycle if the same call is in progress,
/// else `body`'s result, remembered. A full memo first drops its finished entries; if every entry is in
/// progress, this call is not remembered.
#[inline(always)]
fn memo_call<F: FnOnce(&mut Runtime) -> Result<Id, Err>>(rt: &mut Runtime, key: MemoKey, body: F) -> Result<Id, Err> {
    if let Some(&normal) = rt.finished.get(&key) { return Ok(normal); }
    if rt.running.contains(&key) { return Err(Err::Cycle); }
    if rt.finished.len() + rt.running.len() >= MAX_MEMO_ENTRIES {
        rt.finished.clear();
        if rt.running.len() >= MAX_MEMO_ENTRIES { return body(rt); }
    }
    rt.running.insert(key);
    let normal = body(rt)?;
    rt.running.remove(&key);
    rt.finished.insert(key, normal);
    Ok(normal)
}

/// A tracked call: RewriteCycle if the same call is in progress, else `body`'s result, not remembered.
#[inline(always)]
fn tracked_call<F: FnOnce(&mut Runtime) -> Result<Id, Err>>(rt: &mut Runtime, key: MemoKey, body: F)
    -> Result<Id, Err> {
    if !rt.tracking.insert(key) { return Err(Err::Cycle); }
    let normal = body(rt)?;
    rt.tracking.remove(&key);
    Ok(normal)
}
"""

MAIN = r"""
/// stdin: `fuel`, then `L value` / `A op k1 .. kn` lines (children by earlier line index), then `R i` roots.
/// stdout per root `N steps text` or `E code steps rule`, then `C` and the firing counters.
fn main() {
    let worker = std::thread::Builder::new().stack_size(STACK_BYTES).spawn(harness).expect("rewriting thread");
    if worker.join().is_err() { std::process::exit(101); }
}

fn harness() {
    use std::io::{Read, Write};
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).expect("stdin");
    let mut lines = input.lines();
    let fuel: u64 = lines.next().expect("fuel").trim().parse().expect("fuel");
    let mut rt = Runtime::new(fuel, STACK_BYTES);
    let mut ids: Vec<Id> = Vec::new();
    let mut roots: Vec<Id> = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"L") => ids.push(rt.lit(f[1].parse().expect("literal"))),
            Some(&"A") => {
                let kids: Vec<Id> = f[2..].iter().map(|k| ids[k.parse::<usize>().expect("child")]).collect();
                ids.push(rt.mk(f[1].parse().expect("operator"), &kids));
            }
            Some(&"R") => roots.push(ids[f[1].parse::<usize>().expect("root")]),
            _ => {}
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for root in roots {
        match rt.normalize_root(root) {
            Ok(r) => writeln!(out, "N {} {}", rt.steps, rt.to_text(r)),
            Err(e) => writeln!(out, "E {} {} {}", e.code(), rt.steps, rt.last_rule),
        }.expect("stdout");
    }
    let counts: Vec<String> = rt.counters.iter().map(|c| c.to_string()).collect();
    writeln!(out, "C {}", counts.join(" ")).expect("stdout");
}
"""


MAX_INDENT = 64


def _indent(depth: int) -> str:
    """Indentation stops growing past MAX_INDENT levels: a tree thousands deep must not make the text
    quadratic in its depth (rustc reads it the same)."""
    return "    " * min(depth, MAX_INDENT)


def _comment(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").replace("*/", "* /")


class _Attempt:
    """What one try of a rule has evaluated: each distinct sub-expression once (farm/callgraph.py), by the
    Rust local that holds its value; pattern variables by the local bound to their subterm."""

    def __init__(self, rule: int, bound: dict[str, str]) -> None:
        self.rule = rule
        self.bound = bound
        self.values: dict[PatternExpr, str] = {}
        self.seen: set[PatternExpr] = set()

    def value(self, expr: PatternExpr) -> str:
        return self.bound[expr.name] if isinstance(expr, Var) else self.values[expr]


class RustCodegen:
    def __init__(self, ruleset: RuleSet, tree_budget: int = NODE_BUDGET) -> None:
        self.ruleset = ruleset
        self.tree_budget = tree_budget
        self.op_ids = {name: i for i, (name, _) in enumerate(ruleset.signature)}
        self.arities = dict(ruleset.signature)
        self.defined = ruleset.rules_by_root()
        self.memoised = memoised_ops(ruleset)
        self.tracked = tracked_ops(ruleset)
        self.untracked = untracked_calls(ruleset)
        self.memo_width = max((self.arities[op] for op in self.memoised | self.tracked), default=0)
        self.functions: list[str] = []
        self._fresh = itertools.count()

    def generate(self, with_main: bool = False) -> str:
        for op_name, rules in self.defined.items():
            self._operator(op_name, rules)
        memoised = ", ".join(_comment(op) for op in sorted(self.memoised)) or "none"
        tracked = ", ".join(_comment(op) for op in sorted(self.tracked)) or "none"
        header = [
            "// Generated by farm from a ruleset; do not edit.",
            f"// ruleset fingerprint {self.ruleset.fingerprint()}",
            *(f"// rule {r.index}: {_comment(r.name)}: {_comment(str(r))}" for r in self.ruleset.rules),
            f"// memoised operators: {memoised}",
            f"// tracked operators: {tracked}",
            "#![allow(unused_variables, unused_mut, unused_labels, unreachable_code, dead_code, unused_parens,",
            "         non_snake_case, clippy::all)]",
            f"pub const RULE_COUNT: usize = {len(self.ruleset.rules)};",
            f"pub const OP_COUNT: usize = {len(self.ruleset.signature)};",
            f"pub const MAX_CONDITION_DEPTH: usize = {MAX_CONDITION_DEPTH};",
            f"pub const MAX_CALL_DEPTH: usize = {MAX_CALL_DEPTH};",
            f"pub const MAX_MEMO_ENTRIES: usize = {MAX_MEMO_ENTRIES};",
            f"pub const MEMO_WIDTH: usize = {self.memo_width};",
        ]
        return "\n".join([*header, RUNTIME, self._dispatch(), "", *self.functions,
                          MAIN if with_main else ""]) + "\n"

    def _dispatch(self) -> str:
        arms = []
        for op_name in self.defined:
            op = self.op_ids[op_name]
            args = "".join(f", a[{i}]" for i in range(self.arities[op_name]))
            arms.append(f"        {op} => norm_{op}(rt{args}),")
        return "\n".join(["/// `op` applied to normal forms: a call of a defined operator, a node of a constructor.",
                          "pub fn call(rt: &mut Runtime, op: i32, a: &[Id]) -> Result<Id, Err> {",
                          "    match op {", *arms, "        _ => Ok(rt.mk(op, a)),", "    }", "}", ""])

    def _params(self, op_name: str) -> tuple[str, str]:
        """The argument declarations and uses of an operator's functions: `, a0: Id, a1: Id` and `, a0, a1`."""
        names = [f"a{i}" for i in range(self.arities[op_name])]
        return "".join(f", {n}: Id" for n in names), "".join(f", {n}" for n in names)

    def _operator(self, op_name: str, rules: list[RewriteRule]) -> None:
        """`norm_<k>`: the call (depth, then memo or tracking), and `rules_<k>`: the first rule that fires, or
        the node itself."""
        op = self.op_ids[op_name]
        decls, uses = self._params(op_name)
        body = f"rules_{op}(rt{uses})"
        wrapper = "memo_call" if op_name in self.memoised else "tracked_call" if op_name in self.tracked else ""
        if wrapper:
            padded = [f"a{i}" for i in range(self.arities[op_name])]
            padded += ["0"] * (self.memo_width - len(padded))
            body = f"{wrapper}(rt, ({op}, [{', '.join(padded)}]), |rt| {body})"
        policy = " (memoised)" if op_name in self.memoised else " (tracked)" if op_name in self.tracked else ""
        self.functions.append("\n".join([f"/// operator {op}: {_comment(op_name)}{policy}",
                                         *self._call_function(f"norm_{op}", decls, body)]))
        if any(call.op == op_name for _, call in self.untracked):
            self.functions.append("\n".join([f"/// operator {op}: its calls that are not tracked",
                                             *self._call_function(f"step_{op}", decls, f"rules_{op}(rt{uses})")]))
        args = ", ".join(f"a{i}" for i in range(self.arities[op_name]))
        run(self._tree_function(f"rules_{op}", op_name, build_tree(rules, self.tree_budget),
                                f"Ok(rt.mk({op}, &[{args}]))"))

    @staticmethod
    def _call_function(name: str, decls: str, body: str) -> list[str]:
        """A call: its depth, then `body`."""
        return [f"fn {name}(rt: &mut Runtime{decls}) -> Result<Id, Err> {{",
                "    rt.enter()?;", f"    let normal = {body};", "    rt.leave();", "    normal", "}", ""]

    def _tree_function(self, name: str, op_name: str, tree: Tree, on_fail: str) -> Step[None]:
        decls, _ = self._params(op_name)
        body: list[str] = []
        env: dict[Occurrence, str] = {(i,): f"a{i}" for i in range(self.arities[op_name])}
        yield self._emit(tree, op_name, env, on_fail, body, 1)
        self.functions.append("\n".join([f"fn {name}(rt: &mut Runtime{decls}) -> Result<Id, Err> {{",
                                         *body, "}", ""]))

    def _var(self, prefix: str) -> str:
        return f"{prefix}{next(self._fresh)}"

    def _emit(self, tree: Tree, op_name: str, env: dict[Occurrence, str], on_fail: str, out: list[str],
              depth: int) -> Step[None]:
        """A trampoline step (farm/trampoline.py): trees are as deep as patterns are large."""
        pad = _indent(depth)
        if isinstance(tree, Fail):
            out.append(f"{pad}return {on_fail};")
        elif isinstance(tree, Chain):
            rest = self._var("chunk")
            _, uses = self._params(op_name)
            yield self._tree_function(rest, op_name, tree.rest, on_fail)
            yield self._emit(tree.first, op_name, env, f"{rest}(rt{uses})", out, depth)
        elif isinstance(tree, Switch) and tree.occurrence == ():
            # The call itself: every rule of the operator has it at the root, its arguments are a0 ..
            assert len(tree.cases) == 1 and tree.cases[0][0][1] == op_name and isinstance(tree.default, Fail)
            yield self._emit(tree.cases[0][1], op_name, env, on_fail, out, depth)
        elif isinstance(tree, Switch):
            yield self._switch(tree, op_name, env, on_fail, out, depth)
        else:
            yield self._leaf(tree, op_name, env, on_fail, out, depth)

    def _switch(self, tree: Switch, op_name: str, env: dict[Occurrence, str], on_fail: str, out: list[str],
                depth: int) -> Step[None]:
        pad = _indent(depth)
        v = env[tree.occurrence]
        lit_arms = " ".join(f"{h[1]}i64 => {i}," for i, (h, _) in enumerate(tree.cases) if h[0] == "lit")
        app_arms = " ".join(f"{self.op_ids[str(h[1])]} => {i}," for i, (h, _) in enumerate(tree.cases)
                            if h[0] == "app")
        sel = self._var("sel")
        on_lit = f"match rt.val({v}) {{ {lit_arms} _ => -1 }}" if lit_arms else "-1"
        on_app = f"match rt.op({v}) {{ {app_arms} _ => -1 }}" if app_arms else "-1"
        out.append(f"{pad}let {sel}: i32 = if rt.is_lit({v}) {{ {on_lit} }} else {{ {on_app} }};")
        out.append(f"{pad}match {sel} {{")
        for i, (head, sub) in enumerate(tree.cases):
            out.append(f"{pad}    {i} => {{")
            # One env for the whole tree, not a copy per case (quadratic in depth): each occurrence is
            # written once on any path from the root, so a subtree reads only what its own path wrote.
            for j in range(head[2]):
                kid = self._var("k")
                out.append(f"{pad}        let {kid} = rt.kid({v}, {j});")
                env[tree.occurrence + (j,)] = kid
            yield self._emit(sub, op_name, env, on_fail, out, depth + 2)
            out.append(f"{pad}    }}")
        out.append(f"{pad}    _ => {{")
        yield self._emit(tree.default, op_name, env, on_fail, out, depth + 2)
        out.append(f"{pad}    }}")
        out.append(f"{pad}}}")

    def _leaf(self, leaf: Leaf, op_name: str, env: dict[Occurrence, str], on_fail: str, out: list[str],
              depth: int) -> Step[None]:
        """The rule's tests in order (equalities, then its guards); if all hold it fires (one step) and
        returns its target's value. Otherwise, on with the rules after it."""
        pad = _indent(depth)
        inner = pad + "    "
        attempt = _Attempt(leaf.rule.index, {name: env[occ] for name, occ in leaf.bindings.items()})
        label = self._var("'rule")
        out.append(f"{pad}// rule {leaf.rule.index}: {_comment(leaf.rule.name)}")
        out.append(f"{pad}{label}: {{")
        for x, y in leaf.equalities:
            out.append(f"{inner}if {env[x]} != {env[y]} {{ break {label}; }}")
        for c in leaf.rule.constraints:
            out.append(f"{inner}if !({self._guard(c, attempt, out, inner)}) {{ break {label}; }}")
        out.append(f"{inner}rt.fire({leaf.rule.index})?;")
        out.append(f"{inner}return Ok({self._evaluate(leaf.rule.target, attempt, out, inner)});")
        out.append(f"{pad}}}")
        yield self._emit(leaf.otherwise if leaf.otherwise is not None else Fail(), op_name, env, on_fail, out,
                         depth)

    def _guard(self, c: Constraint, attempt: _Attempt, out: list[str], pad: str) -> str:
        bound = attempt.bound
        if isinstance(c, IsConst):
            return f"rt.is_lit({bound[c.var.name]})"
        if isinstance(c, Compare):
            if c.op in ("==", "!="):
                same = self._same(c.left, c.right, bound)
                return same if c.op == "==" else f"!({same})"
            (la, va), (lb, vb) = self._literal(c.left, bound), self._literal(c.right, bound)
            return f"{la} && {lb} && ({va} {c.op} {vb})"
        assert isinstance(c, TermCondition)
        out.append(f"{pad}rt.begin_condition()?;")
        left = self._evaluate(c.left, attempt, out, pad)
        right = self._evaluate(c.right, attempt, out, pad)
        out.append(f"{pad}rt.end_condition();")
        return f"{left} {'==' if c.equal else '!='} {right}"

    def _literal(self, side: Var | Lit, bound: dict[str, str]) -> tuple[str, str]:
        if isinstance(side, Lit):
            return "true", f"({side.value}i64)"
        return f"rt.is_lit({bound[side.name]})", f"rt.val({bound[side.name]})"

    def _same(self, left: Var | Lit, right: Var | Lit, bound: dict[str, str]) -> str:
        if isinstance(left, Var) and isinstance(right, Var):
            return f"{bound[left.name]} == {bound[right.name]}"
        if isinstance(left, Lit) and isinstance(right, Lit):
            return "true" if left.value == right.value else "false"
        var, lit = (left, right) if isinstance(left, Var) else (right, left)
        assert isinstance(lit, Lit)
        is_lit, value = self._literal(var, bound)
        return f"({is_lit} && {value} == ({lit.value}i64))"

    def _evaluate(self, expr: PatternExpr, attempt: _Attempt, out: list[str], pad: str) -> str:
        """The local holding `expr`'s value, after the statements that compute what this attempt has not yet
        computed: innermost, left to right, each distinct sub-expression once (farm/callgraph.py)."""
        for sub in fresh_subexpressions(expr, attempt.seen):
            name = self._var("t")
            out.append(f"{pad}let {name} = {self._compute(sub, attempt)};")
            attempt.values[sub] = name
        return attempt.value(expr)

    def _compute(self, expr: PatternExpr, attempt: _Attempt) -> str:
        """One sub-expression whose own sub-expressions are computed: a literal, a call or a node."""
        if isinstance(expr, Lit):
            return f"rt.lit({expr.value}i64)"
        if isinstance(expr, Computed):
            return f"rt.lit({self._arith(expr.expr, attempt.bound)})"
        assert isinstance(expr, App)
        op = self.op_ids[expr.op]
        args = [attempt.value(arg) for arg in expr.args]
        if expr.op in self.defined:
            function = f"step_{op}" if (attempt.rule, expr) in self.untracked else f"norm_{op}"
            return f"{function}(rt{''.join(', ' + a for a in args)})?"
        return f"rt.mk({op}, &[{', '.join(args)}])"

    def _arith(self, expr: LitExpr, bound: dict[str, str]) -> str:
        return run(self._arith_step(expr, bound))

    def _arith_step(self, expr: LitExpr, bound: dict[str, str]) -> Step[str]:
        if isinstance(expr, Lit):
            return f"({expr.value}i64)"
        if isinstance(expr, Var):
            return f"rt.val({bound[expr.name]})"
        if isinstance(expr, Neg):
            return f"({(yield self._arith_step(expr.operand, bound))}).wrapping_neg()"
        assert isinstance(expr, BinOp)
        x = yield self._arith_step(expr.left, bound)
        y = yield self._arith_step(expr.right, bound)
        method = {"+": "wrapping_add", "-": "wrapping_sub", "*": "wrapping_mul", "/": "wrapping_div",
                  "%": "wrapping_rem"}.get(expr.op)
        if method:
            return f"{x}.{method}({y})"
        if expr.op in ("<<", ">>"):
            shift = "wrapping_shl" if expr.op == "<<" else "wrapping_shr"
            return f"{x}.{shift}(({y} & 63) as u32)"
        return f"({x} {expr.op} {y})"


def generate_rust(ruleset: RuleSet, with_main: bool = False, tree_budget: int = NODE_BUDGET) -> str:
    return RustCodegen(ruleset, tree_budget).generate(with_main)


def _harness_ops(ruleset: RuleSet, graph: TermGraph) -> list[int]:
    """The harness's id of each operator of `graph`: the ruleset's ids, then free operators after them."""
    native = {name: i for i, (name, _) in enumerate(ruleset.signature)}
    free = itertools.count(len(native))
    return [native[name] if name in native else next(free) for name in graph.signature.names]


def harness_input(ruleset: RuleSet, graph: TermGraph, roots: list[int], fuel: int) -> str:
    """The stdin of the generated `main`: the graph children-first, operators renumbered like the loader."""
    op_ids = _harness_ops(ruleset, graph)
    lines = [str(fuel)]
    for node in range(max(roots) + 1 if roots else 0):
        if graph.is_lit(node):
            lines.append(f"L {graph.value(node)}")
        else:
            lines.append(" ".join(["A", str(op_ids[graph.ops[node]]), *map(str, graph.kids(node))]))
    lines += [f"R {root}" for root in roots]
    return "\n".join(lines) + "\n"


def harness_output(ruleset: RuleSet, graph: TermGraph, stdout: str) -> tuple[list[str], list[int]]:
    """Normal forms as text (errors as `error <code> <name> <steps> <rule index>`, the name the interpreter's
    exception class has) and the firing counters."""
    names = dict(zip(_harness_ops(ruleset, graph), graph.signature.names))
    results, counters = [], []
    for line in stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "N":
            results.append(re.sub(r"#(\d+)", lambda m: names[int(m.group(1))], rest.partition(" ")[2]))
        elif kind == "E":
            code, steps, rule = rest.split()
            results.append(f"error {code} {ERROR_NAMES.get(int(code), 'unknown')} {steps} {rule}")
        elif kind == "C":
            counters = [int(c) for c in rest.split()]
    return results, counters


def harness_steps(stdout: str) -> list[int]:
    """The rewrite steps each root took, normal form or error."""
    steps = []
    for line in stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind in ("N", "E"):
            steps.append(int(rest.split()[0 if kind == "N" else 1]))
    return steps
