"""The C ABI of a compiled ruleset library, declared once (docs/abi.md): the code generator takes its
llvmlite types from here and the loader its ctypes types, so the two cannot drift apart."""

from __future__ import annotations

ABI_VERSION = 11

# The only functions a library may import (the C library's, which the runtime calls): the IR and ELF policies
# (farm/compiler/policy.py, elf_policy.py) refuse any other.
# madvise only asks the kernel to populate pages the runtime is about to write: the IR policy refuses any call
# with another advice (farm/compiler/policy.py).
ALLOWED_IMPORTS = frozenset({"malloc", "calloc", "realloc", "free", "memcpy", "memmove", "memset", "madvise"})
MADV_POPULATE_WRITE = 23  # <linux/mman.h>, Linux 5.14+

# Result codes below zero: a call's or a root's error (every other result is a node id, >= 0).
NO_MATCH = -1  # internal: no memo entry found / claimed nothing
ERR_FUEL, ERR_CYCLE, ERR_OOM, ERR_INPUT, ERR_DEPTH, ERR_CALLS, ERR_STACK = -2, -3, -4, -5, -6, -7, -8
IN_PROGRESS = -1  # a memo entry's value while its call runs

# Node layout in the heap (i64 words): a header word (op in the low 32 bits, signed; arity above), its parent
# word, then the children, or a literal's value. The parent word sits at a fixed place, so interning reads it
# without first reading the child's header. A node takes at least two words: a forwarding address fits.
LIT_OP = -1
PARENT_AT = 1
CONTENT_AT = 2
FORWARDED = -2  # header of a node the collector has moved; word 1 holds its new id
# The parent word: the id of a node that has this one as its last child and is found through it (its
# registered parent), or one of these. Every node is its last child's registered parent or in the
# hash-consing table.
NO_PARENT = -1  # never a last child yet: a node built on it as its last child is new
SHARED_PARENT = -2  # its registered parent was collected: nodes built on it are in the table
# farm_mark numbers the nodes it reaches in their parent words, node k holding MARK_BASE - k (a word at or
# below MARK_BASE is a mark): the export needs no map of its own. The next farm_rewrite on the arena puts
# the parent words right first.
MARK_BASE = -3
NO_LIMIT = 2**63 - 1  # the arena's `limit` until a loader sets the memory cap

# The arena struct: every field is 8 bytes, in this order ("ptr" or "i64").
ARENA_FIELDS: list[tuple[str, str]] = [
    ("heap", "ptr"), ("top", "i64"),  # the current space: i64 words, bump pointer
    ("cap", "i64"),  # the bump pointer's limit: the space's words whose pages are populated (at most heap_cap)
    ("heap_cap", "i64"),  # the current space's capacity in words
    # the other space: the collector copies into it (NULL from a growth of the spaces until the next collection
    # allocates it), its capacity, and its words whose pages are populated
    ("spare", "ptr"), ("spare_cap", "i64"), ("spare_ready", "i64"),
    ("table", "ptr"), ("table_mask", "i64"), ("table_count", "i64"),  # hash-consing: node ids by content
    ("roots", "ptr"), ("rsp", "i64"),  # the shadow stack: node ids of calls in progress
    ("roots_cap", "i64"),  # the cells a call may use without asking farm_grow_roots: populated ones
    ("roots_alloc", "i64"),  # the shadow stack's capacity in cells
    ("memo", "ptr"), ("memo_mask", "i64"), ("memo_count", "i64"), ("memo_done", "i64"), ("memo_width", "i64"),
    ("memo_epoch", "i64"),  # counts the memo's rebuilds: a slot kept across one is stale
    ("track", "ptr"), ("track_mask", "i64"), ("track_count", "i64"), ("track_width", "i64"),
    ("track_epoch", "i64"),  # counts the tracked calls' table rebuilds: a slot kept across one is stale
    ("nf", "ptr"), ("n_rows", "i64"),  # normal form of each input row (-1: not yet)
    ("out", "ptr"), ("n_out", "i64"),  # the roots' results so far
    ("work", "ptr"), ("work_cap", "i64"),  # the explicit stack of input-term walks and exports
    ("marked", "i64"), ("marked_kids", "i64"),  # nodes numbered (0: no parent word holds a mark), their children
    ("steps", "i64"), ("fuel", "i64"), ("counters", "ptr"), ("last_rule", "i64"),
    ("rule_base", "ptr"),  # the index of each ruleset operator's first rule
    ("depth", "i64"),  # condition nesting (a root is 1)
    ("stack_bytes", "i64"),  # native stack the caller provides (0: unchecked)
    ("stack_floor", "i64"),  # a call whose frame is below this address asks farm_stack first (0: never)
    ("stack_end", "i64"),  # the lowest address a call's frame may be at: below, the call fails (ERR_STACK)
    ("stack_top", "i64"),  # farm_rewrite's frame: the stack below it counts toward `limit` as memory held
    ("limit", "i64"), ("held", "i64"),  # the memory cap in bytes, and the bytes the arena holds
    ("collections", "i64"), ("peak_words", "i64"),  # statistics: collections run, largest live heap
    ("grow_next", "i64"),  # 1: the last collection kept nearly all it found, so the next full space grows instead
    # nonzero while an export runs that farm_populate (on another thread) populates ahead of: set by the
    # caller before both start, cleared by farm_export as it ends (atomically: two threads read or write it)
    ("exporting", "i64"),
]
ARENA_INDEX = {name: i for i, (name, _) in enumerate(ARENA_FIELDS)}

# Exported functions: name -> (result kind, argument kinds). "arena" is a pointer to the struct above,
# "i64*" a pointer to int64 cells, "i32*" to int32 cells (a term graph's operator, arity and child columns),
# "str" a NUL-terminated string, "void" no result.
EXPORTS: dict[str, tuple[str, list[str]]] = {
    "farm_abi_version": ("i64", []), "farm_rule_count": ("i64", []), "farm_op_count": ("i64", []),
    "farm_memo_width": ("i64", []), "farm_track_width": ("i64", []), "farm_fingerprint": ("str", []),
    "farm_arena_new": ("arena", []), "farm_arena_free": ("void", ["arena"]),
    # (arena, rows, ops, arities, values, kids, kids length, roots, root rows, out, info, fuel)
    "farm_rewrite": ("i64", ["arena", "i64", "i32*", "i32*", "i64*", "i32*", "i64", "i64", "i64*", "i64*",
                             "i64*", "i64"]),
    "farm_mark": ("i64", ["arena", "i64", "i64*", "i64*"]),
    # (arena, roots, root ids, mapped roots, ops, values, arities, kids)
    "farm_export": ("i64", ["arena", "i64", "i64*", "i64*", "i32*", "i64*", "i32*", "i32*"]),
    # (arena, ops, values, arities, kids, rows, children): populate the columns' pages ahead of a farm_export
    "farm_populate": ("i64", ["arena", "i32*", "i64*", "i32*", "i32*", "i64", "i64"]),
}


def export_bound(top: int) -> tuple[int, int]:
    """The rows and children an export can write at most from a space filled up to `top` words (the arena's
    `top`): a node takes two words at least (header and parent word), and each child one. farm_export
    without a farm_mark before it writes into columns of these sizes."""
    return top // 2, top
