"""intern<n>: the shared node of a constructor over n children, the common cases inline in the rules' module.

The runtime's farm_intern (farm/compiler/codegen/runtime.py) does the rest: further probes, a collection. The
hash is the runtime's hash_words, unrolled, so each finds what the other files.
"""

from __future__ import annotations

from collections.abc import Sequence

from farm.compiler.codegen import textir as ir
from farm.compiler.codegen.abi import NO_PARENT
from farm.compiler.codegen.heap import K1, K2, TAG_SHIFT, call, parent_at, push_roots, same_node
from farm.compiler.codegen.irbuild import I64, PTR, TRUE, FunctionBuilder, c64


def hash_words(b: ir.IRBuilder, head: ir.Value, words: Sequence[ir.Value]) -> ir.Value:
    """The runtime's hash_words, unrolled: the runtime finds what this code files, and back."""
    h = b.mul(head, c64(K1))
    for word in words:
        mixed = b.mul(b.xor(h, word), c64(K2))
        h = b.xor(mixed, b.lshr(mixed, c64(29)))
    return b.xor(h, b.lshr(h, c64(32)))


def kids_equal(f: FunctionBuilder, node: ir.Value, kids: Sequence[ir.Value]) -> ir.Value:
    """Whether `node`'s children are these (unrolled; the caller checked its header)."""
    same: ir.Value = TRUE
    for k, kid in enumerate(kids):
        same = f.b.and_(same, f.b.icmp_signed("==", f.content(node, k), kid))
    return same


def shared_intern_name(arity: int) -> str:
    """The runtime's intern<n> (heap.SHARED_INTERN_ARITY), which other modules may call."""
    return f"farm_intern{arity}"


def intern_function(module: ir.Module, arity: int, inline: bool, shared: bool = False) -> ir.Function:
    """intern<n>(arena, header, kid 0 .. kid n-1): the shared node (farm_intern's contract), with the common
    cases in this module: the last kid was never a last kid (the node is new: no hashing, no table), its
    registered parent is this node, or the first table slot probed is free or holds it. The others go to
    farm_intern (further probes, a collection), given the kids pushed on the shadow stack, where a collection
    finds and moves them. `shared`: the runtime's, which other modules call (shared_intern_name)."""
    name = shared_intern_name(arity) if shared else f"intern{arity}"
    existing = module.globals.get(name)
    if isinstance(existing, ir.Function):
        return existing
    f = FunctionBuilder(module, name, I64, [PTR, I64] + [I64] * arity, internal=not shared)
    if inline:
        f.fn.attributes.add("alwaysinline")
    b = f.b
    head, kids = f.args[1], list(f.args[2:2 + arity])
    slow = f.block("slow")
    if kids:
        last = parent_at(f, kids[-1])
        parent = f.word(last, 0)
        new_block, known = f.block("fresh"), f.block("known")
        b.cbranch(b.icmp_signed("==", parent, c64(NO_PARENT)), new_block, known)
        b.position_at_end(new_block)
        top = _bump_node(f, head, kids, slow)
        f.set_word(last, 0, top)
        b.ret(top)
        b.position_at_end(known)
        with b.if_then(b.icmp_signed(">=", parent, c64(0))):
            found = f.block("registered")
            same_node(f, parent, head, lambda node: kids_equal(f, node, kids), found)
            with b.goto_block(found):
                b.ret(parent)
    _first_probe(f, head, kids, slow)
    b.position_at_end(slow)
    b.ret(_pushed_intern(f, head, kids))
    return f.fn


def _pushed_intern(f: FunctionBuilder, head: ir.Value, kids: Sequence[ir.Value]) -> ir.Value:
    """farm_intern, the kids pushed on the shadow stack for the call's length."""
    base = push_roots(f, list(kids))
    node = call(f, "farm_intern", f.arena, head, c64(len(kids)), f.root_ptr(base))
    f.put("rsp", base)
    return node


def _bump_node(f: FunctionBuilder, head: ir.Value, kids: Sequence[ir.Value], slow: ir.Block) -> ir.Value:
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


def _first_probe(f: FunctionBuilder, head: ir.Value, kids: Sequence[ir.Value], slow: ir.Block) -> None:
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
    top = _bump_node(f, head, kids, slow)
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



__all__ = ["hash_words", "intern_function", "kids_equal", "shared_intern_name"]
