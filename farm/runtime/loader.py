"""Load a ruleset's shared library with ctypes (after checking its sha256) and rewrite term graphs with it.

One call into the library normalises every root of a term graph given as its columns (farm_rewrite), two
export the normal forms (farm_mark, farm_export): no per-node Python work on the native side. Rewriting runs
on a thread with a large stack: compiled rules recurse natively, one frame per call in progress.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import hashlib
import itertools
import os
import queue
import shutil
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farm.compiler.codegen.abi import (
    ABI_VERSION,
    ARENA_FIELDS,
    ERR_CALLS,
    ERR_CYCLE,
    ERR_DEPTH,
    ERR_FUEL,
    ERR_INPUT,
    ERR_OOM,
    ERR_STACK,
    EXPORTS,
    NO_LIMIT,
    export_bound,
)
from farm.compiler.elf_policy import check_library
from farm.config import max_memory_from_env
from farm.errors import ArenaOutOfMemory, IntegrityError, LoadError, NonTermination, TermError
from farm.lang.terms import ID_TYPECODE, LIT, MAX_NODES, VALUE_TYPECODE, Column, TermGraph, bulk
from farm.lang.transduce import RuleSet
from farm.runtime.mapped import address, bounded_columns, exact_columns
from farm.semantics import (
    DEFAULT_FUEL,
    RewriteResult,
    calls_error,
    check_fuel,
    cycle_error,
    depth_error,
    fuel_error,
    memory_error,
)


class ArenaStruct(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p if kind == "ptr" else ctypes.c_int64) for name, kind in ARENA_FIELDS]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    _check_digest(path, sha256_file(path), expected)


def _check_digest(path: str | Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise IntegrityError(f"{path}: sha256 is {actual}, expected {expected}; refusing to load it")


MAX_LIBRARY_BYTES = 1 << 30  # far above any ruleset's library; a bigger file is refused before it is read


def open_library(path: Path, sha256: str | None) -> ctypes.CDLL:
    """dlopen, only after the bytes are the ones recorded and the library passes the load policy (no imports
    outside the allow-list, nothing that runs on load): a refused library never has a chance to run.

    The file is read once, and the sha256, the policy and dlopen all see that one copy: a library swapped in
    the cache directory after its check is never the one loaded."""
    data = _read_library(path)
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None:
        _check_digest(path, actual, sha256)
    check_library(data, path.name)
    try:
        return _dlopen_copy(data, actual)
    except OSError as exc:
        raise LoadError(f"cannot load {path}: {exc}") from None


def _read_library(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_LIBRARY_BYTES:
                raise LoadError(f"{path} is {size:,} bytes; a library may be at most {MAX_LIBRARY_BYTES:,}")
            return fh.read(MAX_LIBRARY_BYTES + 1)
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from None


def _dlopen_copy(data: bytes, sha256: str) -> ctypes.CDLL:
    """dlopen these very bytes: a sealed memory file nobody else can write, reached through a fresh name in a
    private directory (glibc reuses an already loaded object whose name matches, so /proc/self/fd/N alone is
    not safe). Where memory files may not hold code (vm.memfd_noexec), a private copy on disk serves instead."""
    name = _private_dir() / f"{sha256[:32]}-{os.getpid()}-{next(_LOADS)}.so"
    try:
        fd = _sealed_memory_file(data, sha256)
    except OSError:
        fd = None
    if fd is not None:
        try:
            name.symlink_to(f"/proc/self/fd/{fd}")
            return ctypes.CDLL(str(name))
        except OSError:
            pass  # e.g. memory files may not be executable here: fall back to the private copy
        finally:
            os.close(fd)
            name.unlink(missing_ok=True)
    try:
        name.write_bytes(data)
        return ctypes.CDLL(str(name))
    finally:
        name.unlink(missing_ok=True)


_LOADS = itertools.count()
_PRIVATE_DIR: Path | None = None


def _private_dir() -> Path:
    """A directory (mode 0700) only this user can place a name in, made once per process."""
    global _PRIVATE_DIR
    if _PRIVATE_DIR is None or not _PRIVATE_DIR.is_dir():
        _PRIVATE_DIR = Path(tempfile.mkdtemp(prefix="farm-load-"))
        atexit.register(shutil.rmtree, _PRIVATE_DIR, True)
    return _PRIVATE_DIR


_MFD_EXEC = 0x10  # Linux 6.3+: ask for an executable memory file where vm.memfd_noexec would deny it


def _sealed_memory_file(data: bytes, sha256: str) -> int:
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        fd = os.memfd_create(f"farm-{sha256[:16]}", flags | _MFD_EXEC)
    except OSError:  # an older kernel refuses the unknown flag
        fd = os.memfd_create(f"farm-{sha256[:16]}", flags)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


ARENA_P = ctypes.POINTER(ArenaStruct)
I64 = ctypes.c_int64
# Cell arrays go as plain addresses: building a POINTER object per argument cost more than the call.
_CTYPES: dict[str, Any] = {"i64": I64, "arena": ARENA_P, "i64*": ctypes.c_void_p, "i32*": ctypes.c_void_p,
                           "str": ctypes.c_char_p, "void": None}
# The library's exported functions: name -> (result type, argument types), from the one ABI table.
ABI: dict[str, tuple[Any, list[Any]]] = {name: (_CTYPES[ret], [_CTYPES[a] for a in args])
                                         for name, (ret, args) in EXPORTS.items()}
# Compiled rules recurse natively, a frame per call in progress: a stack that holds MAX_CALL_DEPTH of them.
# It is address space; only the pages a deep recursion touches are memory. The library checks its depth
# against all but STACK_MARGIN of it (for the runtime's own frames and ctypes).
STACK_BYTES = 1 << 30
STACK_MARGIN = 4 << 20


class _BigStack(threading.local):
    """One thread with a STACK_BYTES stack per calling thread, started on first use, that runs calls into
    the library. Starting a thread per call costs milliseconds; handing a call over costs microseconds."""

    jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[tuple[bool, Any]]]] | None = None

    def run(self, job: Callable[[], Any], interrupt: Callable[[], None],
            alongside: Callable[[], object] | None = None) -> Any:
        """job() on the big stack; meanwhile this thread runs alongside(), if given. On Ctrl-C, or any exception
        raised here meanwhile (a signal handler's: SIGALRM's timeout), interrupt() (which must make the job end
        soon), then re-raise once the job has ended: it owns memory the caller is about to free."""
        if self.jobs is None:
            self.jobs = queue.SimpleQueue()
            with _STACK_SIZE_LOCK:
                previous = threading.stack_size(STACK_BYTES)
                try:
                    threading.Thread(target=_serve, args=(self.jobs,), name="farm-native", daemon=True).start()
                finally:
                    threading.stack_size(previous)
        done: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self.jobs.put((job, done))
        try:
            if alongside is not None:
                alongside()
            ok, value = done.get()
        except BaseException:
            interrupt()
            _wait_for(done)
            raise
        if not ok:
            raise value
        return value


def _wait_for(done: queue.SimpleQueue[tuple[bool, Any]]) -> None:
    """The job's end, whatever else is raised here while waiting (a second Ctrl-C): its memory is freed next."""
    while True:
        try:
            done.get()
            return
        except BaseException:  # noqa: S112 (the first exception is the one raised, once the job has ended)
            continue


def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[tuple[bool, Any]]]]) -> None:
    while True:
        job, done = jobs.get()
        try:
            done.put((True, job()))
        except BaseException as exc:  # handed to the caller, raised there
            done.put((False, exc))


_STACK_SIZE_LOCK = threading.Lock()
_BIG_STACK = _BigStack()


def _forget_big_stack() -> None:
    """In a forked child: the thread that forked is the only one left, and its big-stack thread is gone (a job
    handed to it would wait for ever); its next call starts one of its own."""
    global _STACK_SIZE_LOCK
    _STACK_SIZE_LOCK = threading.Lock()  # another thread may have held it at the fork
    _BIG_STACK.jobs = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_big_stack)


class _Bound:
    """The ABI's functions as ctypes callables, from a dlopen'ed library or from raw addresses."""

    farm_abi_version: Any
    farm_rule_count: Any
    farm_op_count: Any
    farm_memo_width: Any
    farm_fingerprint: Any
    farm_arena_new: Any
    farm_arena_free: Any
    farm_rewrite: Any
    farm_mark: Any
    farm_export: Any
    farm_populate: Any

    def __init__(self, resolve: Callable[[str, Any, list[Any]], Any]) -> None:
        for name, (restype, argtypes) in ABI.items():
            setattr(self, name, resolve(name, restype, argtypes))


def _from_library(lib: ctypes.CDLL) -> _Bound:
    def resolve(name: str, restype: Any, argtypes: list[Any]) -> Any:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
        return fn

    return _Bound(resolve)


def _from_addresses(address: Callable[[str], int]) -> _Bound:
    return _Bound(lambda name, restype, argtypes: ctypes.CFUNCTYPE(restype, *argtypes)(address(name)))


IN_MEMORY = Path("<in-memory>")  # the `path` of code compiled in memory, which has no file


class NativeRuleset:
    """A loaded ruleset library. Not thread-safe per call: each rewrite() owns a fresh arena."""

    _keepalive: object = None  # for in-memory code: the JIT engine that owns it

    def __init__(self, path: str | Path, ruleset: RuleSet, sha256: str | None = None) -> None:
        self.path = Path(path)
        self.ruleset = ruleset
        self.lib = _from_library(open_library(self.path, sha256))
        self._check(str(self.path))

    @classmethod
    def in_memory(cls, address: Callable[[str], int], ruleset: RuleSet, keepalive: object) -> NativeRuleset:
        """Code loaded into this process by a JIT: `address(name)` finds each function; `keepalive` owns
        the memory the code lives in."""
        self = cls.__new__(cls)
        self.path = IN_MEMORY
        self.ruleset = ruleset
        self.lib = _from_addresses(address)
        self._keepalive = keepalive
        self._check("in-memory code")
        return self

    def _check(self, where: str) -> None:
        self._native_ids = {name: i for i, (name, _) in enumerate(self.ruleset.signature)}
        lib, ruleset = self.lib, self.ruleset
        abi = (lib.farm_abi_version(), lib.farm_rule_count(), lib.farm_op_count())
        want = (ABI_VERSION, len(ruleset.rules), len(ruleset.signature))
        if abi != want:
            raise LoadError(f"{where}: library reports (abi, rules, ops) = {abi}, expected {want}")
        if lib.farm_fingerprint() != ruleset.fingerprint().encode():
            raise LoadError(f"{where} was built for another ruleset (fingerprint "
                            f"{lib.farm_fingerprint().decode()[:12]}, expected {ruleset.fingerprint()[:12]})")

    def rewrite(self, graph: TermGraph, roots: list[int], fuel: int = DEFAULT_FUEL,
                max_memory: int | None = None) -> RewriteResult:
        """max_memory: bytes the arena may hold (0: no cap); None takes FARM_MAX_MEMORY or its default."""
        check_fuel(fuel)
        cap = max_memory_from_env() if max_memory is None else max_memory
        with bulk():
            return self._rewrite(graph, roots, fuel, cap)

    def _rewrite(self, graph: TermGraph, roots: list[int], fuel: int, cap: int) -> RewriteResult:
        """Normalise the graph's roots in one call, given its columns as they are, and export the normal
        forms' subgraph into fresh columns (two calls). The outcomes are nodes of a new TermGraph over those
        columns, with the input's signature."""
        started = time.perf_counter()
        to_native = self._op_map(graph)
        ops = graph.ops if to_native is None else array(ID_TYPECODE, [op if op == LIT else to_native[op]
                                                                      for op in graph.ops])
        rows = max(roots) + 1 if roots else 0  # ids are children-first: the prefix is a valid graph
        arena = self.lib.farm_arena_new()
        if not arena:
            raise ArenaOutOfMemory("farm_arena_new could not allocate the arena", cap)
        # 0, or a cap past the arena's signed 64-bit counter (which ctypes would wrap): no cap
        arena.contents.limit = cap if 0 < cap < NO_LIMIT else NO_LIMIT
        arena.contents.stack_bytes = max(STACK_BYTES - STACK_MARGIN, STACK_BYTES // 2)
        try:
            root_rows = array("q", roots)
            out, info = _zeros(len(roots)), _zeros(2 * len(roots))
            columns = [_ptr(column) for column in (ops, graph.arities, graph.vals, graph.kid_ids)]
            prepared = time.perf_counter()

            def rewrite() -> int:
                return int(self.lib.farm_rewrite(arena, rows, *columns, len(graph.kid_ids), len(roots),
                                                 _ptr(root_rows), _ptr(out), _ptr(info), fuel))

            def stop() -> None:
                arena.contents.fuel = 0  # the next firing fails: the call returns soon

            code = _BIG_STACK.run(rewrite, stop)
            rewritten = time.perf_counter()
            if code == ERR_OOM:
                raise memory_error(cap, arena.contents.held, "while rewriting")
            if code != 0:
                raise TermError(f"the native library rejected the term graph (code {code}): an arity does not "
                                "match the ruleset or a child index is out of order")
            result = self._collect(arena, graph, to_native, out, info, fuel, cap)
            result.seconds = {"import": prepared - started, "rewrite": rewritten - prepared,
                              "collect": time.perf_counter() - rewritten}
            return result
        finally:
            self.lib.farm_arena_free(arena)

    def _collect(self, arena: Any, graph: TermGraph, to_native: list[int] | None, out: array, info: array,
                 fuel: int, cap: int) -> RewriteResult:
        (ops, vals, arities, kids), fresh, bounded = self._export(arena, out)
        mapped = _zeros(len(out))
        columns = [_ptr(ops), _ptr(vals), _ptr(arities), _ptr(kids)]

        def export() -> int:
            return int(self.lib.farm_export(arena, len(out), _ptr(out), _ptr(mapped), *columns))

        if fresh is None:
            nodes = export()
        else:  # on the library's thread, while this one populates the columns' pages ahead of it
            rows, children = fresh
            arena.contents.exporting = 1
            nodes = _BIG_STACK.run(export, lambda: None,  # nothing to interrupt: an export always ends
                                   lambda: self.lib.farm_populate(arena, *columns, rows, children))
        if nodes > MAX_NODES:
            raise TermError(f"the normal forms have {nodes} nodes; a term graph holds at most {MAX_NODES}")
        if bounded:  # views of what was written
            ops, vals, arities, kids = ops[:nodes], vals[:nodes], arities[:nodes], kids[:arena.contents.marked_kids]
        if to_native is not None or len(graph.signature.names) < len(self.ruleset.signature):
            ops = array(ID_TYPECODE, map(self._graph_op(graph, to_native), ops))
        # the columns (exactly as long as farm_mark counted, or views of the rows written) are the graph's, uncopied
        result_graph = TermGraph.from_columns(graph.signature, ops, vals, arities, kids)
        names = [r.name for r in self.ruleset.rules]
        outcomes: list[int | NonTermination] = []
        for i, result in enumerate(out):
            steps, last = info[2 * i], info[2 * i + 1]
            rule = names[last] if last >= 0 else ""
            if result >= 0:
                outcomes.append(mapped[i])
            elif result == ERR_FUEL:
                outcomes.append(fuel_error(fuel, rule))
            elif result == ERR_CYCLE:
                outcomes.append(cycle_error(steps, rule))
            elif result == ERR_DEPTH:
                outcomes.append(depth_error(rule, steps))
            elif result == ERR_CALLS:
                outcomes.append(calls_error(rule, steps))
            elif result == ERR_STACK:
                outcomes.append(calls_error(rule, steps, native_stack=arena.contents.stack_bytes))
            elif result == ERR_OOM:
                raise memory_error(cap, arena.contents.held, f"while rewriting term {i + 1}")
            else:
                raise LoadError(f"farm_rewrite returned unknown code {result}")
        counters = _zeros(len(names))
        ctypes.memmove(_ptr(counters), arena.contents.counters, 8 * len(names))
        return RewriteResult(result_graph, outcomes, counters.tolist(), "native", list(info[0::2]))

    def _export(self, arena: Any, out: array) -> tuple[list[Column], tuple[int, int] | None, bool]:
        """Columns for farm_export; if they are fresh pages, how many of their rows and children to populate
        alongside the export (farm_populate); whether they are sized by a bound. A large export goes in one
        walk, into columns sized by the bound (export_bound: mapped, only the pages written become memory);
        the columns are then sliced to the rows written. Else farm_mark counts the nodes first (a second
        walk), and the columns are exactly that large."""
        top = arena.contents.top
        bound_rows, bound_kids = export_bound(top)
        bounded = bounded_columns([(ID_TYPECODE, bound_rows), (VALUE_TYPECODE, bound_rows),
                                   (ID_TYPECODE, bound_rows), (ID_TYPECODE, bound_kids)])
        if bounded is not None:
            # Populated alongside, at most the rows the space can hold of nodes that are not nullary constants
            # (those take 3 words at least; a constant is shared, one per operator): the export populates
            # itself any further rows, and the pages populated ahead are at most the heap's.
            return bounded, (top // 3, top // 3), True
        sizes = _zeros(2)
        self.lib.farm_mark(arena, len(out), _ptr(out), _ptr(sizes))  # it allocates nothing: it cannot fail
        nodes, children = sizes
        columns, fresh = exact_columns([(ID_TYPECODE, nodes), (VALUE_TYPECODE, nodes), (ID_TYPECODE, nodes),
                                        (ID_TYPECODE, children)])
        return columns, (nodes, children) if fresh else None, False

    def _graph_op(self, graph: TermGraph, to_native: list[int] | None) -> Callable[[int], int]:
        """Native op id -> the graph's op id. A normal form may apply a ruleset operator the graph never
        declared (a rule's target built it): it is declared then, as the interpreter does."""
        to_graph = {native: op for op, native in enumerate(to_native or range(len(graph.signature.names)))}

        def graph_op(native: int) -> int:
            if native == LIT:
                return LIT
            if native not in to_graph:
                name, arity = self.ruleset.signature[native]
                to_graph[native] = graph.signature.declare(name, arity)
            return to_graph[native]

        return graph_op

    def _op_map(self, graph: TermGraph) -> list[int] | None:
        """Graph op id -> native op id (ruleset ops first, then free constructors); None when they are the
        same (a graph made with ruleset.make_signature()), so the columns go to the library untouched."""
        native_ids = self._native_ids
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
        return None if to_native == list(range(len(to_native))) else to_native

def _zeros(count: int, typecode: str = VALUE_TYPECODE) -> array:
    """Exactly `count` zeroed cells: callers pass len() of these arrays to the library as element counts, so
    a padded array (once sized max(1, count)) made the library read a node that does not exist."""
    return array(typecode, [0]) * count  # one write per page; array(.., bytes(n)) touched each page twice


def _ptr(values: Column) -> int:
    """The address of a column's cells (an "i64*" or "i32*" argument), valid while it is alive and not resized."""
    return address(values)


__all__ = ["ERR_INPUT", "NativeRuleset", "open_library", "sha256_file", "verify_sha256"]
