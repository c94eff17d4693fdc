"""Load a ruleset's shared library with ctypes (after checking its sha256) and rewrite term graphs with it.

One call into the library imports the whole graph (farm_load), one normalises every root
(farm_rewrite); the results are read straight out of the arena's memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import time
from array import array
from pathlib import Path

from farm.codegen.llvm import (
    ABI_VERSION,
    ARENA_FIELDS,
    ERR_CYCLE,
    ERR_FUEL,
    ERR_INPUT,
    ERR_OOM,
    F_ARITY,
    F_OP,
    F_PAYLOAD,
    LIT_OP,
    NODE_STRIDE,
)
from farm.errors import ArenaOutOfMemory, IntegrityError, LoadError, NonTermination, TermError
from farm.interp import RewriteResult
from farm.semantics import DEFAULT_FUEL, cycle_error, fuel_error
from farm.terms import LIT, TermGraph, bulk
from farm.transduce import RuleSet

I64P = ctypes.POINTER(ctypes.c_int64)


class ArenaStruct(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p if str(ty) == "ptr" else ctypes.c_int64) for name, ty in ARENA_FIELDS]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(f"{path}: sha256 is {actual}, expected {expected}; refusing to load it")


def _i64_array(values: array) -> ctypes.Array:
    return (ctypes.c_int64 * max(1, len(values))).from_buffer(values if len(values) else array("q", [0]))


class NativeRuleset:
    """A loaded ruleset library. Not thread-safe per call: each rewrite() owns a fresh arena."""

    def __init__(self, path: str | Path, ruleset: RuleSet, sha256: str | None = None) -> None:
        self.path = Path(path)
        self.ruleset = ruleset
        if sha256 is not None:
            verify_sha256(self.path, sha256)
        try:
            lib = ctypes.CDLL(str(self.path))
        except OSError as exc:
            raise LoadError(f"cannot load {self.path}: {exc}") from None
        for name in ("farm_abi_version", "farm_rule_count", "farm_op_count", "farm_node_stride"):
            getattr(lib, name).restype = ctypes.c_int64
        abi = (lib.farm_abi_version(), lib.farm_rule_count(), lib.farm_op_count(), lib.farm_node_stride())
        want = (ABI_VERSION, len(ruleset.rules), len(ruleset.signature), NODE_STRIDE)
        if abi != want:
            raise LoadError(f"{self.path}: library reports (abi, rules, ops, stride) = {abi}, expected {want}")
        lib.farm_fingerprint.restype = ctypes.c_char_p
        if lib.farm_fingerprint() != ruleset.fingerprint().encode():
            raise LoadError(f"{self.path} was built for another ruleset (fingerprint "
                            f"{lib.farm_fingerprint().decode()[:12]}, expected {ruleset.fingerprint()[:12]})")
        lib.farm_arena_new.restype = ctypes.POINTER(ArenaStruct)
        lib.farm_arena_free.argtypes = [ctypes.POINTER(ArenaStruct)]
        lib.farm_arena_free.restype = None
        lib.farm_load.argtypes = [ctypes.POINTER(ArenaStruct), ctypes.c_int64, I64P, I64P, I64P, I64P, I64P]
        lib.farm_load.restype = ctypes.c_int64
        lib.farm_rewrite.argtypes = [ctypes.POINTER(ArenaStruct), ctypes.c_int64, I64P, I64P, I64P, ctypes.c_int64]
        lib.farm_rewrite.restype = ctypes.c_int64
        self.lib = lib

    def rewrite(self, graph: TermGraph, roots: list[int], fuel: int = DEFAULT_FUEL) -> RewriteResult:
        with bulk():
            return self._rewrite(graph, roots, fuel)

    def _rewrite(self, graph: TermGraph, roots: list[int], fuel: int) -> RewriteResult:
        started = time.perf_counter()
        to_native, to_graph = self._op_maps(graph)
        # Graph ids are children-first already, so the prefix up to the last root is a valid import order
        # with positions equal to ids: no reachability pass, no renumbering.
        count = max(roots) + 1 if roots else 0
        ops, arities, values, kids = array("q"), array("q"), array("q"), array("q")
        graph_ops, payload = graph.ops, graph.payload
        for node in range(count):
            op = graph_ops[node]
            if op == LIT:
                ops.append(LIT_OP)
                arities.append(0)
                values.append(payload[node])  # type: ignore[arg-type]
            else:
                node_kids: tuple[int, ...] = payload[node]  # type: ignore[assignment]
                ops.append(to_native[op])
                arities.append(len(node_kids))
                values.append(len(kids))
                kids.extend(node_kids)
        arena = self.lib.farm_arena_new()
        if not arena:
            raise ArenaOutOfMemory("farm_arena_new could not allocate the arena")
        try:
            ids = array("q", bytes(8 * max(1, count)))
            code = self.lib.farm_load(arena, count, *(ctypes.cast(_i64_array(a), I64P)
                                                           for a in (ops, arities, values, kids, ids)))
            if code == ERR_OOM:
                raise ArenaOutOfMemory("the native arena ran out of memory while loading the terms")
            if code != 0:
                raise TermError(f"the native library rejected the term graph (code {code}): an arity does not "
                                "match the ruleset or a child index is out of order")
            loaded = time.perf_counter()
            native_roots = array("q", [ids[r] for r in roots])
            out = array("q", bytes(8 * max(1, len(roots))))
            info = array("q", bytes(16 * max(1, len(roots))))
            self.lib.farm_rewrite(arena, len(roots), *(ctypes.cast(_i64_array(a), I64P)
                                                       for a in (native_roots, out, info)), fuel)
            rewritten = time.perf_counter()
            result = self._collect(arena.contents, graph, to_graph, list(out[:len(roots)]), info, fuel)
            result.seconds = {"import": loaded - started, "rewrite": rewritten - loaded,
                              "collect": time.perf_counter() - rewritten}
            return result
        finally:
            self.lib.farm_arena_free(arena)

    def _op_maps(self, graph: TermGraph) -> tuple[list[int], dict[int, int]]:
        """Graph op id -> native op id (ruleset ops first, then free constructors), and back."""
        native_ids = {name: i for i, (name, _) in enumerate(self.ruleset.signature)}
        to_native: list[int] = []
        free = len(native_ids)
        for name, arity in zip(graph.signature.names, graph.signature.arities):
            if name in native_ids:
                expected = self.ruleset.signature[native_ids[name]][1]
                if arity != expected:
                    raise TermError(f"operator {name!r} has arity {expected} in the ruleset, {arity} in the terms")
                to_native.append(native_ids[name])
            else:
                to_native.append(free)
                free += 1
        to_graph = {native: g for g, native in enumerate(to_native)}
        return to_native, to_graph

    def _collect(self, arena: ArenaStruct, graph: TermGraph, to_graph: dict[int, int], out: list[int],
                 info: array, fuel: int) -> RewriteResult:
        nodes = _int64_view(arena.nodes, arena.n_nodes * NODE_STRIDE)
        kids = _int64_view(arena.kids, max(1, arena.n_kids))
        names = [r.name for r in self.ruleset.rules]
        outcomes: list[int | NonTermination] = []
        wanted = sorted(_reachable(nodes, kids, [r for r in out if r >= 0]))
        mapped: dict[int, int] = {}
        for node in wanted:  # native ids are children-first, so ascending order builds kids before parents
            base = node * NODE_STRIDE
            op = nodes[base + F_OP]
            if op == LIT_OP:
                mapped[node] = graph.lit(nodes[base + F_PAYLOAD])
            else:
                offset, arity = nodes[base + F_PAYLOAD], nodes[base + F_ARITY]
                mapped[node] = graph.app(to_graph[op], [mapped[kids[offset + j]] for j in range(arity)])
        for i, result in enumerate(out):
            steps, last = info[2 * i], info[2 * i + 1]
            rule = names[last] if last >= 0 else ""
            if result >= 0:
                outcomes.append(mapped[result])
            elif result == ERR_FUEL:
                outcomes.append(fuel_error(fuel, rule))
            elif result == ERR_CYCLE:
                outcomes.append(cycle_error(steps, rule))
            elif result == ERR_OOM:
                raise ArenaOutOfMemory("the native arena ran out of memory while rewriting")
            else:
                raise LoadError(f"farm_rewrite returned unknown code {result}")
        counters = list((ctypes.c_int64 * max(1, len(names))).from_address(arena.counters))[:len(names)]
        return RewriteResult(graph, outcomes, counters, "native", list(info[0::2][:len(out)]))


def _int64_view(address: int, count: int) -> memoryview:
    """The arena's memory as Python ints, without copying."""
    return memoryview((ctypes.c_int64 * count).from_address(address)).cast("B").cast("q")


def _reachable(nodes: memoryview, kids: memoryview, roots: list[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        base = node * NODE_STRIDE
        if nodes[base + F_OP] != LIT_OP:
            offset = nodes[base + F_PAYLOAD]
            stack.extend(kids[offset + j] for j in range(nodes[base + F_ARITY]))
    return seen


__all__ = ["ERR_INPUT", "NativeRuleset", "sha256_file", "verify_sha256"]
