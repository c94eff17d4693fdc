"""The runtime of the Rust target (farm/compiler/codegen/rust.py), pasted into every generated file: hash-consed nodes,
the memo and tracked calls, per-root steps and fuel, firing counters; and the harness's `main`."""

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
