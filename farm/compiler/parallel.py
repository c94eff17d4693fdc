"""A large ruleset's chunks generated and compiled in worker processes, for the in-memory path (tier 0).

Code generation is Python and llvmlite serialises every call into LLVM with one lock, so in one process a
1000-rule ruleset's 17 chunks go one after the other (issue 14, goal 3: about 1.3 s of code generation and 1.8 s
of parsing, checking and compiling). Chunks are independent (farm/compiler/codegen/llvm.py), so each worker process
generates its share from the pickled ruleset, parses it, runs every check of the load policy that needs no other
module (farm.compiler.policy.check_module_alone) and compiles it; this process does a share too, then checks that
every function a chunk imports is defined by some module of the library (check_provided): the decision
check_module makes, on the same parses.

Workers are `python -m farm.compiler.parallel` processes, started on first use and kept: one fewer than the cores
(this process is the other), each serving one request at a time over its stdin and stdout (length-prefixed
pickles). Not multiprocessing: a fork would copy this process's threads' held locks (a tiered engine's background
build holds llvmlite's), and spawn or forkserver run the caller's main script again in the child, which a script
without a `__main__` guard does not survive. A worker ignores Ctrl-C (the caller handles it) and exits when its
stdin closes, so it never outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from farm.compiler.codegen.llvm import LLVMCodegen, remember_parts, runtime_ir
from farm.compiler.policy import check_module_alone, check_provided, defined_function_names, parse_ir
from farm.errors import CompileWorkerLost, FarmError, StageFailed
from farm.lang.transduce import RuleSet
from farm.locks import quick_switching
from farm.log import get_logger
from farm.targets import Target

log = get_logger(__name__)
MIN_CHUNKS = 4  # fewer chunks than this are not sent to workers: a round trip would cost more than it saves
TIER0_PIECES = 4  # a small ruleset is cut into about this many modules for the pipeline (at least 8 rules each)
_HEADER = struct.Struct("<Q")
_WORKERS: list[_Worker] = []
_WORKERS_LOCK = threading.Lock()  # one caller at a time uses the workers (each serves one request at a time)
_keep_one = False  # prestart_worker was called: a small ruleset's compile replaces a worker that died


@dataclass(frozen=True)
class CompiledChunk:
    name: str
    ir_text: str
    object_code: bytes
    defines: frozenset[str]
    imports: tuple[str, ...]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compile_chunks(ruleset: RuleSet, target: Target, opt_level: int, code_model: str,
                   compile_module: Callable[[Any, str], bytes]) -> tuple[list[CompiledChunk], frozenset[str]]:
    """The ruleset as a manifest and chunks, each generated, checked and compiled (`compile_module(module,
    name)`: this process's compile of a parsed module, to object code); and the functions the library will
    define, the runtime's included (what the runtime module's own check takes as provided).

    Here, code generation (Python) runs while a thread compiles the chunk generated before (LLVM, which lets go of
    the interpreter lock): a small ruleset is cut into a few chunks for that, not into the library's layout. A
    ruleset large enough to have MIN_CHUNKS chunks of the library's own layout is shared with worker processes
    too, and its parts are remembered as ruleset_parts makes them, for the build of its library. A small one's
    chunks are shared with a worker only if one has started up already (prestart_worker: a farm server's)."""
    codegen = LLVMCodegen(ruleset, target.triple)
    chunks = codegen.chunks()
    library_layout = len(chunks) >= MIN_CHUNKS and cores() > 1
    pieces = None
    if not library_layout:
        pieces = max(8, -(-len(ruleset.rules) // TIER0_PIECES))
        chunks = codegen.chunks(pieces)
        # pieces of this compile only, not the library's parts: at -O0 shaped for fast instruction selection
        codegen.quick = opt_level == 0
    with _WORKERS_LOCK:
        if library_layout:  # every n-th chunk to each: sizes spread evenly
            shares = [list(range(k, len(chunks), cores())) for k in range(cores())]
            workers = _workers(len(shares) - 1)
        else:  # a worker's share only if one is ready (a farm server keeps one): starting one costs more
            if _keep_one and cores() > 1:
                _workers(1)  # one that died is replaced, for the next compile: it is not ready for this one
            workers = _ready_workers(1) if len(chunks) > 1 and cores() > 1 else []
            by_root = ruleset.rules_by_root()
            shares = _shared_with_a_worker([sum(len(by_root[op]) for op in chunk) for chunk in chunks]) \
                if workers else [list(range(len(chunks)))]
            if len(shares) > 1 and not shares[1]:
                shares, workers = shares[:1], []
        sent: list[tuple[_Worker, list[int]]] = []
        mine = [i for share in (shares[0], *shares[1 + len(workers):]) for i in share]  # no worker for the rest
        try:
            if workers:
                request = pickle.dumps((ruleset, target, opt_level, code_model, pieces, codegen.quick),
                                       protocol=pickle.HIGHEST_PROTOCOL)
                for worker, share in zip(workers, shares[1:]):
                    if _sent(worker, request, share):
                        sent.append((worker, share))
                    else:
                        mine += share
            done = _pipeline([codegen.manifest_part, *(partial(codegen.chunk_part, i, chunks[i]) for i in mine)],
                             compile_module)
            for worker, share in sent:
                done += _received(worker) or [_compiled(*codegen.chunk_part(i, chunks[i]), compile_module)
                                              for i in share]
        except BaseException:  # a request left half done (Ctrl-C, an error here): those workers start afresh
            for worker in workers:
                worker.stop_if_busy()
            raise
    manifest, *rest = done
    rest.sort(key=lambda chunk: int(chunk.name.removeprefix("chunk")))
    provided = frozenset().union(_runtime_defines(target.triple), manifest.defines, *(c.defines for c in rest))
    for chunk in (manifest, *rest):
        check_provided(chunk.imports, provided, chunk.name)
    if library_layout:
        remember_parts(ruleset, target.triple, [("runtime", runtime_ir(target.triple)),
                                                *((c.name, c.ir_text) for c in (manifest, *rest))])
    return [manifest, *rest], provided


# A worker's rule costs it WORKER_COST of one here, where the manifest costs about MANIFEST_RULES rules: the worker
# generates and compiles its share alone on its core, while here code generation and the compile thread share one
# interpreter lock. arith.farm's first load, 2 x 6 alternating samples with and without a ready worker (fastest):
# 1.4: 47-60 ms; 1.0: 46-49 ms; 0.8: 39-41 ms (without: 62-80 ms; the machine was noisy then).
WORKER_COST, MANIFEST_RULES = 0.8, 2


def _shared_with_a_worker(sizes: list[int]) -> list[list[int]]:
    """Chunk indices for this process and for one worker, by their rules (`sizes`), the largest first to the one
    that would finish it sooner; each share in chunk order."""
    shares: list[list[int]] = [[], []]
    load = [float(MANIFEST_RULES), 0.0]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        here, there = load[0] + sizes[i], load[1] + sizes[i] * WORKER_COST
        side = 0 if here <= there else 1
        load[side] = here if side == 0 else there
        shares[side].append(i)
    return [sorted(share) for share in shares]


def prestart_worker() -> None:
    """Start one worker for later compiles of small rulesets, which use a ready worker only, and keep one from now
    on (a long-lived process: `farm server`); not waited for. Nothing on one core, or when it cannot start."""
    global _keep_one
    if cores() > 1:
        with _WORKERS_LOCK:
            _keep_one = True
            _workers(1)


def _pipeline(generators: list[Callable[[], tuple[str, str]]],
              compile_module: Callable[[Any, str], bytes]) -> list[CompiledChunk]:
    """Each module generated here while a thread parses, checks and compiles the one before.

    The compiling thread needs the interpreter lock back after each call into LLVM (checking a module makes
    hundreds), and by default waits up to 5 ms for it while code generation runs: the two barely overlapped (arith:
    min 67 ms against 69 one after the other, in one run). Switching every 0.2 ms meanwhile: 53 ms; quick_switching
    (farm/locks.py) now switches every 50 us."""
    with quick_switching(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="farm-tier0") as compiler:
        pending = [compiler.submit(_compiled, *generate(), compile_module) for generate in generators]
        return [future.result() for future in pending]


def _sent(worker: _Worker, request: bytes, share: list[int]) -> bool:
    try:
        worker.send(request, share)
    except CompileWorkerLost as exc:
        log.warning("%s; compiling its chunks in this process", exc)
        return False
    return True


def _received(worker: _Worker) -> list[CompiledChunk] | None:
    """The worker's chunks; None when it died on the way (then its share is compiled here)."""
    try:
        return worker.receive()
    except CompileWorkerLost as exc:
        log.warning("%s; compiling its chunks in this process", exc)
        return None


def _compiled(name: str, ir_text: str, compile_module: Callable[[Any, str], bytes]) -> CompiledChunk:
    module = parse_ir(ir_text, name)
    imports = check_module_alone(module, name)
    return CompiledChunk(name, ir_text, compile_module(module, name), defined_function_names(module), imports)


def _runtime_defines(triple: str | None) -> frozenset[str]:
    from farm.compiler.policy import defined_functions

    return defined_functions(runtime_ir(triple))


# ---- the worker processes ----

class _Worker:
    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # where `farm` is imported from here
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
        # -P: `-m` would put the working directory first on sys.path, and a `farm` there would be imported instead.
        # Replies come on a pipe of their own, not stdout: whatever the interpreter prints as it starts (a
        # sitecustomize, a .pth file) would be read as a reply's length.
        reader, writer = os.pipe()
        try:
            self.process = subprocess.Popen([sys.executable, "-P", "-m", "farm.compiler.parallel", str(writer)],
                                            stdin=subprocess.PIPE, pass_fds=(writer,), env=env)
        except OSError as exc:  # no such interpreter, or no process to be had
            os.close(reader)
            raise CompileWorkerLost(f"could not start {sys.executable}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(reader)
            raise
        finally:
            os.close(writer)
        self.replies = os.fdopen(reader, "rb")
        self.busy = False
        self.started_up = False  # its first frame (empty: _serve's) read

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        """Whether it has started up (imported farm and LLVM): its first, empty, frame has come."""
        if not self.started_up and self._has_data():
            try:
                self._started()
            except CompileWorkerLost:  # it died starting up (killed): not used, and replaced when needed
                return False
        return self.started_up

    def _has_data(self) -> bool:
        poller = select.poll()  # not select.select, which refuses a descriptor of 1024 or more
        poller.register(self.replies.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        """Its pipes closed (a dead worker's: not left to the collector, which warns)."""
        for stream in (self.process.stdin, self.replies):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _started(self) -> None:
        if _read(self.replies) != b"":
            raise self._died()
        self.started_up = True

    def send(self, request: bytes, indices: list[int]) -> None:
        assert self.process.stdin is not None
        self.busy = True
        try:
            _write(self.process.stdin, request)
            _write(self.process.stdin, pickle.dumps(indices))
        except OSError:
            raise self._died() from None

    def receive(self) -> list[CompiledChunk]:
        if not self.started_up:
            self._started()
        reply = _read(self.replies)
        if reply is None:
            raise self._died()
        self.busy = False
        kind, value = pickle.loads(reply)
        if kind == "error":
            raise value
        return list(value)

    def stop_if_busy(self) -> None:
        if self.busy:
            self.process.kill()
            self.process.wait()

    def _died(self) -> CompileWorkerLost:
        self.process.kill()
        code = self.process.wait()
        self.busy = False
        return CompileWorkerLost(f"a worker process compiling chunks in parallel exited (code {code}; its error, if "
                                 "any, is on this process's stderr)", code)


def _after_fork_in_child() -> None:
    """A fork's child starts with the lock free: a thread of the parent that held it does not exist here. (The
    parent's workers are not the child's: poll() reports them gone, and _workers() starts the child's own.)"""
    global _WORKERS_LOCK
    _WORKERS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _ready_workers(count: int) -> list[_Worker]:
    """Up to `count` live workers that have started up, none started here."""
    _drop_dead()
    return [w for w in _WORKERS if w.ready()][:count]


def _drop_dead() -> None:
    for worker in [w for w in _WORKERS if not w.alive()]:
        worker.close()
        _WORKERS.remove(worker)


def _workers(count: int) -> list[_Worker]:
    """Up to `count` live workers: the ones started before, and new ones for those that died; fewer when one
    cannot start (sys.executable is no Python that imports farm: an embedded interpreter), whose share is then
    compiled in this process."""
    _drop_dead()
    while len(_WORKERS) < count:
        try:
            _WORKERS.append(_Worker())
        except CompileWorkerLost as exc:
            log.warning("%s; compiling every chunk in this process", exc)
            break
    return _WORKERS[:count]


def _write(stream: IO[bytes], data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = _HEADER.unpack(header)[0]
    data = stream.read(size)
    return data if len(data) == size else None


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """A worker's life: an empty frame once it has started up; then a request (the ruleset, target, -O, code model,
    the rules per chunk (None: the library's) and the calling convention; then chunk indices) in, the compiled
    chunks (or the FarmError that stopped them) out; until stdin closes."""
    from farm.compiler.toolchain import emit_module, ready_llvm

    ready_llvm()
    try:
        _write(replies, b"")  # started up: a small ruleset's compile may now share its chunks with this one
    except BrokenPipeError:  # the process that started this one is gone: quietly (a return would flush again)
        os._exit(0)
    while (request := _read(requests)) is not None and (indices := _read(requests)) is not None:
        ruleset, target, opt_level, code_model, pieces, quick = pickle.loads(request)
        codegen = LLVMCodegen(ruleset, target.triple, quick=quick)  # the caller's code: the same IR
        chunks = codegen.chunks(pieces) if pieces else codegen.chunks()  # as the caller cut them

        def compile_module(module: Any, name: str, target: Target = target, opt_level: int = opt_level,
                           code_model: str = code_model) -> bytes:
            return emit_module(module, target, opt_level, code_model)[0]

        try:
            done = [_compiled(*codegen.chunk_part(i, chunks[i]), compile_module) for i in pickle.loads(indices)]
            reply = pickle.dumps(("chunks", done), protocol=pickle.HIGHEST_PROTOCOL)
        except FarmError as exc:
            try:
                reply = pickle.dumps(("error", exc))
                pickle.loads(reply)  # an error whose constructor takes other arguments does not come back
            except Exception:  # noqa: BLE001 - any unpicklable error is reported by its text
                reply = pickle.dumps(("error", StageFailed("compile worker", 1, f"{type(exc).__name__}: {exc}")))
        _write(replies, reply)


def main() -> None:
    """The worker's entry point. Replies go out on the pipe whose descriptor is the argument (or a copy of stdout,
    without one), and stdout itself is pointed at stderr: nothing printed along the way can corrupt a reply."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; stdin closing ends this
    replies = os.fdopen(int(sys.argv[1]), "wb") if len(sys.argv) > 1 else os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    from farm.compiler import parallel  # the classes a reply pickles are this module's, not __main__'s

    parallel.main()


__all__ = ["MIN_CHUNKS", "CompiledChunk", "compile_chunks"]
