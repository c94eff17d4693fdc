"""Rust source for a ruleset: the same arena, decision trees and innermost strategy as the LLVM target.

The output is one self-contained file that `rustc` accepts, with no crates. With `with_main=True` it also
has a `main` that reads a term graph in the flat format of docs/abi.md (farm_load) on stdin and prints
normal forms, so that tests can run the Rust rewriter against the interpreter.
Rule and operator names appear only in comments and string literals, escaped.
"""

from __future__ import annotations

import itertools
import re

from farm.matchtree import NODE_BUDGET, Chain, Fail, Leaf, Occurrence, Switch, Tree, build_tree
from farm.rules import App, BinOp, Compare, Computed, Constraint, IsConst, Lit, LitExpr, Neg, PatternExpr, Var
from farm.semantics import MAX_CONDITION_DEPTH
from farm.terms import TermGraph
from farm.trampoline import Step, run
from farm.transduce import RuleSet

RUNTIME = r"""
use std::collections::HashMap;

pub const LIT: i64 = -1;
pub const NO_MATCH: i64 = -1;
pub const ERR_FUEL: i64 = -2;
pub const ERR_CYCLE: i64 = -3;
pub const ERR_DEPTH: i64 = -6;

#[derive(Clone)]
struct Node { op: i64, arity: usize, payload: i64, nf: i64, via: i64, mark: bool }

pub struct Arena {
    nodes: Vec<Node>,
    kids: Vec<i64>,
    table: HashMap<(i64, i64, Vec<i64>), i64>,
    stack: Vec<(i64, usize)>,
    pub steps: i64,
    pub fuel: i64,
    pub last_rule: i64,
    pub counters: Vec<i64>,
    depth: usize,
}

impl Arena {
    pub fn new() -> Arena {
        Arena { nodes: Vec::new(), kids: Vec::new(), table: HashMap::new(), stack: Vec::new(),
                steps: 0, fuel: 0, last_rule: -1, counters: vec![0; RULE_COUNT], depth: 0 }
    }

    pub fn mk(&mut self, op: i64, value: i64, kids: &[i64]) -> i64 {
        let key = (op, if op == LIT { value } else { 0 }, kids.to_vec());
        if let Some(&id) = self.table.get(&key) { return id; }
        let id = self.nodes.len() as i64;
        let payload = if op == LIT { value } else { self.kids.len() as i64 };
        self.kids.extend_from_slice(kids);
        self.nodes.push(Node { op, arity: kids.len(), payload, nf: -1, via: -1, mark: false });
        self.table.insert(key, id);
        id
    }

    pub fn op(&self, n: i64) -> i64 { self.nodes[n as usize].op }
    pub fn val(&self, n: i64) -> i64 { self.nodes[n as usize].payload }
    pub fn is_lit(&self, n: i64) -> bool { self.op(n) == LIT }
    pub fn kid(&self, n: i64, j: usize) -> i64 { self.kids[self.nodes[n as usize].payload as usize + j] }
    pub fn kids_of(&self, n: i64) -> Vec<i64> {
        let node = &self.nodes[n as usize];
        if node.op == LIT { return Vec::new(); }
        self.kids[node.payload as usize..node.payload as usize + node.arity].to_vec()
    }

    fn fire(&mut self, rule: usize) -> bool {
        self.counters[rule] += 1;
        self.steps += 1;
        self.last_rule = rule as i64;
        self.steps <= self.fuel
    }

    fn push(&mut self, n: i64) -> i64 {
        if self.nodes[n as usize].mark { return ERR_CYCLE; }
        self.nodes[n as usize].mark = true;
        self.stack.push((n, 0));
        0
    }

    fn finish(&mut self, n: i64, normal: i64) {
        let node = &mut self.nodes[n as usize];
        node.nf = normal;
        node.mark = false;
        self.stack.pop();
    }

    /// Innermost normal form of `root`, or a negative error code; the same steps as farm/interp.py.
    pub fn normalize(&mut self, root: i64) -> i64 {
        if self.nodes[root as usize].nf != -1 { return self.nodes[root as usize].nf; }
        if self.depth >= MAX_CONDITION_DEPTH { return ERR_DEPTH; }
        self.depth += 1;
        let result = self.normalize_frames(root);
        self.depth -= 1;
        result
    }

    fn normalize_frames(&mut self, root: i64) -> i64 {
        let base = self.stack.len();
        let code = self.push(root);
        if code < 0 { return code; }
        while self.stack.len() > base {
            let code = self.step();
            if code < NO_MATCH {
                for i in base..self.stack.len() {
                    let n = self.stack[i].0 as usize;
                    self.nodes[n].mark = false;
                    self.nodes[n].via = -1;
                }
                self.stack.truncate(base);
                return code;
            }
        }
        self.nodes[root as usize].nf
    }

    fn step(&mut self) -> i64 {
        let top = self.stack.len() - 1;
        let (n, mut k) = self.stack[top];
        let via = self.nodes[n as usize].via;
        if via != -1 {
            self.nodes[n as usize].via = -1;
            let normal = self.nodes[via as usize].nf;
            self.finish(n, normal);
            return 0;
        }
        if self.is_lit(n) { self.finish(n, n); return 0; }
        let kids = self.kids_of(n);
        while k < kids.len() && self.nodes[kids[k] as usize].nf != -1 { k += 1; }
        if k < kids.len() {
            self.stack[top].1 = k;
            return self.push(kids[k]);
        }
        let normal: Vec<i64> = kids.iter().map(|&c| self.nodes[c as usize].nf).collect();
        let mut reduced = if normal != kids { self.mk(self.op(n), 0, &normal) } else { n };
        if reduced == n {
            reduced = match_node(self, n);
            if reduced == NO_MATCH { self.finish(n, n); return 0; }
            if reduced < NO_MATCH { return reduced; }
        }
        let target_nf = self.nodes[reduced as usize].nf;
        if target_nf != -1 { self.finish(n, target_nf); return 0; }
        let code = self.push(reduced);
        if code < 0 { return code; }
        self.nodes[n as usize].via = reduced;
        0
    }

    /// `(#op kid ..)` with operator ids, literals in decimal; iterative.
    pub fn to_text(&self, root: i64) -> String {
        let mut out = String::new();
        let mut todo: Vec<(i64, bool)> = vec![(root, false)];
        while let Some((n, close)) = todo.pop() {
            if close { out.push(')'); continue; }
            if !out.is_empty() && !out.ends_with('(') { out.push(' '); }
            if self.is_lit(n) { out.push_str(&self.val(n).to_string()); continue; }
            let kids = self.kids_of(n);
            if kids.is_empty() { out.push_str(&format!("#{}", self.op(n))); continue; }
            out.push_str(&format!("(#{}", self.op(n)));
            todo.push((n, true));
            for &c in kids.iter().rev() { todo.push((c, false)); }
        }
        out
    }
}
"""

MAIN = r"""
/// stdin: `fuel`, then `L value` / `A op k1 .. kn` lines (children by earlier line index), then `R i` roots.
fn main() {
    use std::io::Read;
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).expect("stdin");
    let mut arena = Arena::new();
    let mut ids: Vec<i64> = Vec::new();
    let mut roots: Vec<i64> = Vec::new();
    let mut lines = input.lines();
    arena.fuel = lines.next().expect("fuel").trim().parse().expect("fuel");
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"L") => ids.push(arena.mk(LIT, f[1].parse().unwrap(), &[])),
            Some(&"A") => {
                let kids: Vec<i64> = f[2..].iter().map(|k| ids[k.parse::<usize>().unwrap()]).collect();
                let id = arena.mk(f[1].parse().unwrap(), 0, &kids);
                ids.push(id);
            }
            Some(&"R") => roots.push(ids[f[1].parse::<usize>().unwrap()]),
            _ => {}
        }
    }
    for root in roots {
        arena.steps = 0;
        arena.last_rule = -1;
        let r = arena.normalize(root);
        if r >= 0 { println!("N {}", arena.to_text(r)); }
        else { println!("E {} {} {}", r, arena.steps, arena.last_rule); }
    }
    let counts: Vec<String> = arena.counters.iter().map(|c| c.to_string()).collect();
    println!("C {}", counts.join(" "));
}
"""


MAX_INDENT = 64


def _indent(depth: int) -> str:
    """Indentation stops growing past MAX_INDENT levels: a tree thousands deep must not make the text
    quadratic in its depth (rustc reads it the same)."""
    return "    " * min(depth, MAX_INDENT)


def _comment(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").replace("*/", "* /")


class RustCodegen:
    def __init__(self, ruleset: RuleSet, tree_budget: int = NODE_BUDGET) -> None:
        self.ruleset = ruleset
        self.tree_budget = tree_budget
        self.op_ids = {name: i for i, (name, _) in enumerate(ruleset.signature)}
        self.functions: list[str] = []
        self._fresh = itertools.count()

    def generate(self, with_main: bool = False) -> str:
        dispatch = []
        for op_name, rules in self.ruleset.rules_by_root().items():
            op = self.op_ids[op_name]
            fn = f"match_op{op}"
            self._function(fn, build_tree(rules, self.tree_budget))
            dispatch.append(f"        {op} => {fn}(a, n),")
        header = [
            "// Generated by farm from a ruleset; do not edit.",
            f"// ruleset fingerprint {self.ruleset.fingerprint()}",
            *(f"// rule {r.index}: {_comment(r.name)}: {_comment(str(r))}" for r in self.ruleset.rules),
            "#![allow(unused_variables, unused_mut, unused_labels, unreachable_code, dead_code, unused_parens)]",
            f"pub const RULE_COUNT: usize = {len(self.ruleset.rules)};",
            f"pub const OP_COUNT: usize = {len(self.ruleset.signature)};",
            f"pub const MAX_CONDITION_DEPTH: usize = {MAX_CONDITION_DEPTH};",
        ]
        match = ["/// The rewrite of `n` (children normal) by the first matching rule, NO_MATCH, or an error.",
                 "pub fn match_node(a: &mut Arena, n: i64) -> i64 {", "    match a.op(n) {", *dispatch,
                 "        _ => NO_MATCH,", "    }", "}"]
        return "\n".join([*header, RUNTIME, *match, "", *self.functions, MAIN if with_main else ""]) + "\n"

    def _function(self, name: str, tree: Tree) -> None:
        body: list[str] = []
        run(self._emit(tree, {(): "n"}, "NO_MATCH", body, 1))
        self.functions.append("\n".join([f"fn {name}(a: &mut Arena, n: i64) -> i64 {{", *body, "}", ""]))

    def _var(self, prefix: str) -> str:
        return f"{prefix}{next(self._fresh)}"

    def _emit(self, tree: Tree, env: dict[Occurrence, str], on_fail: str, out: list[str], depth: int) -> Step[None]:
        """A trampoline step (farm/trampoline.py): trees are as deep as patterns are large."""
        pad = _indent(depth)
        if isinstance(tree, Fail):
            out.append(f"{pad}return {on_fail};")
        elif isinstance(tree, Chain):
            rest = self._var("chunk")
            yield self._emit_rest(rest, tree.rest, on_fail)
            yield self._emit(tree.first, env, f"{rest}(a, n)", out, depth)
        elif isinstance(tree, Switch):
            yield self._switch(tree, env, on_fail, out, depth)
        else:
            yield self._leaf(tree, env, on_fail, out, depth)

    def _emit_rest(self, name: str, tree: Tree, on_fail: str) -> Step[None]:
        body: list[str] = []
        yield self._emit(tree, {(): "n"}, on_fail, body, 1)
        self.functions.append("\n".join([f"fn {name}(a: &mut Arena, n: i64) -> i64 {{", *body, "}", ""]))

    def _switch(self, tree: Switch, env: dict[Occurrence, str], on_fail: str, out: list[str],
                depth: int) -> Step[None]:
        pad = _indent(depth)
        v = env[tree.occurrence]
        lits = [(i, h) for i, (h, _) in enumerate(tree.cases) if h[0] == "lit"]
        apps = [(i, h) for i, (h, _) in enumerate(tree.cases) if h[0] == "app"]
        sel = self._var("sel")
        lit_arms = " ".join(f"{h[1]}i64 => {i}," for i, h in lits)
        app_arms = " ".join(f"{self.op_ids[str(h[1])]} => {i}," for i, h in apps)
        out.append(f"{pad}let {sel}: i64 = if a.is_lit({v}) {{ match a.val({v}) {{ {lit_arms} _ => -1 }} }} "
                   f"else {{ match a.op({v}) {{ {app_arms} _ => -1 }} }};")
        out.append(f"{pad}match {sel} {{")
        for i, (head, sub) in enumerate(tree.cases):
            out.append(f"{pad}    {i} => {{")
            # One env for the whole tree, not a copy per case (quadratic in depth): each occurrence is
            # written once on any path from the root, so a subtree reads only what its own path wrote.
            inner = env
            for j in range(head[2]):
                kid = self._var("k")
                out.append(f"{pad}        let {kid} = a.kid({v}, {j});")
                inner[tree.occurrence + (j,)] = kid
            yield self._emit(sub, inner, on_fail, out, depth + 2)
            out.append(f"{pad}    }}")
        out.append(f"{pad}    _ => {{")
        yield self._emit(tree.default, env, on_fail, out, depth + 2)
        out.append(f"{pad}    }}")
        out.append(f"{pad}}}")

    def _leaf(self, leaf: Leaf, env: dict[Occurrence, str], on_fail: str, out: list[str], depth: int) -> Step[None]:
        pad = _indent(depth)
        bound = {name: env[occ] for name, occ in leaf.bindings.items()}
        label = self._var("'rule")
        out.append(f"{pad}// rule {leaf.rule.index}: {_comment(leaf.rule.name)}")
        out.append(f"{pad}{label}: {{")
        inner = pad + "    "
        for x, y in leaf.equalities:
            out.append(f"{inner}if {env[x]} != {env[y]} {{ break {label}; }}")
        for c in leaf.rule.constraints:
            cond = self._guard(c, bound, out, inner)
            out.append(f"{inner}if !({cond}) {{ break {label}; }}")
        out.append(f"{inner}if !a.fire({leaf.rule.index}) {{ return ERR_FUEL; }}")
        out.append(f"{inner}return {self._build(leaf.rule.target, bound, out, inner)};")
        out.append(f"{pad}}}")
        yield self._emit(leaf.otherwise if leaf.otherwise is not None else Fail(), env, on_fail, out, depth)

    def _guard(self, c: Constraint, bound: dict[str, str], out: list[str], pad: str) -> str:
        if isinstance(c, IsConst):
            return f"a.is_lit({bound[c.var.name]})"
        if isinstance(c, Compare):
            if c.op in ("==", "!="):
                same = self._same(c.left, c.right, bound)
                return same if c.op == "==" else f"!({same})"
            (la, va), (lb, vb) = self._literal(c.left, bound), self._literal(c.right, bound)
            return f"{la} && {lb} && ({va} {c.op} {vb})"
        sides = []
        for expr in (c.left, c.right):
            term = self._build(expr, bound, out, pad)
            normal = self._var("nf")
            out.append(f"{pad}let {normal} = a.normalize({term}); if {normal} < NO_MATCH {{ return {normal}; }}")
            sides.append(normal)
        return f"{sides[0]} {'==' if c.equal else '!='} {sides[1]}"

    def _literal(self, side: Var | Lit, bound: dict[str, str]) -> tuple[str, str]:
        if isinstance(side, Lit):
            return "true", f"({side.value}i64)"
        return f"a.is_lit({bound[side.name]})", f"a.val({bound[side.name]})"

    def _same(self, left: Var | Lit, right: Var | Lit, bound: dict[str, str]) -> str:
        if isinstance(left, Var) and isinstance(right, Var):
            return f"{bound[left.name]} == {bound[right.name]}"
        if isinstance(left, Lit) and isinstance(right, Lit):
            return "true" if left.value == right.value else "false"
        var, lit = (left, right) if isinstance(left, Var) else (right, left)
        assert isinstance(lit, Lit)
        is_lit, value = self._literal(var, bound)
        return f"({is_lit} && {value} == ({lit.value}i64))"

    def _build(self, expr: PatternExpr, bound: dict[str, str], out: list[str], pad: str) -> str:
        return run(self._build_step(expr, bound, out, pad))

    def _build_step(self, expr: PatternExpr, bound: dict[str, str], out: list[str], pad: str) -> Step[str]:
        if isinstance(expr, Var):
            return bound[expr.name]
        name = self._var("t")
        if isinstance(expr, Lit):
            out.append(f"{pad}let {name} = a.mk(LIT, {expr.value}i64, &[]);")
        elif isinstance(expr, Computed):
            out.append(f"{pad}let {name} = a.mk(LIT, {self._arith(expr.expr, bound)}, &[]);")
        else:
            assert isinstance(expr, App)
            kids = []
            for arg in expr.args:
                kids.append((yield self._build_step(arg, bound, out, pad)))
            out.append(f"{pad}let {name} = a.mk({self.op_ids[expr.op]}, 0, &[{', '.join(kids)}]);")
        return name

    def _arith(self, expr: LitExpr, bound: dict[str, str]) -> str:
        return run(self._arith_step(expr, bound))

    def _arith_step(self, expr: LitExpr, bound: dict[str, str]) -> Step[str]:
        if isinstance(expr, Lit):
            return f"({expr.value}i64)"
        if isinstance(expr, Var):
            return f"a.val({bound[expr.name]})"
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


def harness_input(ruleset: RuleSet, graph: TermGraph, roots: list[int], fuel: int) -> str:
    """The stdin of the generated `main`: the graph children-first, operators renumbered like the loader."""
    native = {name: i for i, (name, _) in enumerate(ruleset.signature)}
    free = itertools.count(len(native))
    op_ids = [native[name] if name in native else next(free) for name in graph.signature.names]
    lines = [str(fuel)]
    for node in range(max(roots) + 1 if roots else 0):
        if graph.is_lit(node):
            lines.append(f"L {graph.value(node)}")
        else:
            lines.append(" ".join(["A", str(op_ids[graph.ops[node]]), *map(str, graph.kids(node))]))
    lines += [f"R {root}" for root in roots]
    return "\n".join(lines) + "\n"


def harness_output(ruleset: RuleSet, graph: TermGraph, stdout: str) -> tuple[list[str], list[int]]:
    """Normal forms as text (errors as `error <code> <steps> <rule>`) and the firing counters."""
    native = {name: i for i, (name, _) in enumerate(ruleset.signature)}
    free = itertools.count(len(native))
    names = {native[n] if n in native else next(free): n for n in graph.signature.names}
    results, counters = [], []
    for line in stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "N":
            results.append(re.sub(r"#(\d+)", lambda m: names[int(m.group(1))], rest))
        elif kind == "E":
            results.append(f"error {rest}")
        elif kind == "C":
            counters = [int(c) for c in rest.split()]
    return results, counters
