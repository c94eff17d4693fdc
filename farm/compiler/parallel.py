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

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from farm.compiler.codegen.llvm import LLVMCodegen, remember_parts, runtime_ir
from farm.compiler.policy import check_module_alone, check_provided, defined_function_names, parse_ir
from farm.errors import FarmError, StageFailed
from farm.lang.transduce import RuleSet
from farm.targets import Target

MIN_CHUNKS = 4  # fewer chunks than this are compiled here: a worker's round trip would cost more than it saves
_HEADER = struct.Struct("<Q")
_WORKERS: list[_Worker] = []
_WORKERS_LOCK = threading.Lock()  # one caller at a time uses the workers (each serves one request at a time)


@dataclass(frozen=True)
class CompiledChunk:
    name: str
    ir_text: str
    object_code: bytes
    defines: frozenset[str]
    imports: tuple[str, ...]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worth_it(chunk_count: int) -> bool:
    return chunk_count >= MIN_CHUNKS and cores() > 1


def compile_chunks(ruleset: RuleSet, target: Target, opt_level: int, code_model: str,
                   compile_module: Callable[[Any, str], bytes]) -> list[CompiledChunk]:
    """The manifest and every chunk, checked and compiled, in this process and the workers; the ruleset's parts
    are remembered as ruleset_parts would have made them, for the build of its library. `compile_module(module,
    name)` is this process's compile of a parsed module (its object code)."""
    codegen = LLVMCodegen(ruleset, target.triple)
    chunks = codegen.chunks()
    shares = [list(range(k, len(chunks), cores())) for k in range(cores())]  # every n-th: sizes spread evenly
    request = pickle.dumps((ruleset, target, opt_level, code_model), protocol=pickle.HIGHEST_PROTOCOL)
    with _WORKERS_LOCK:
        workers = _workers(len(shares) - 1)
        try:
            for worker, share in zip(workers, shares[1:], strict=True):
                worker.send(request, share)
            here = [_compiled(*codegen.chunk_part(i, chunks[i]), compile_module) for i in shares[0]]
            manifest = _compiled(*codegen.manifest_part(), compile_module)
            done = [*here, *(chunk for worker in workers for chunk in worker.receive())]
        except BaseException:  # a request left half done (Ctrl-C, an error here): those workers start afresh
            for worker in workers:
                worker.stop_if_busy()
            raise
    done.sort(key=lambda chunk: int(chunk.name.removeprefix("chunk")))
    provided = frozenset().union(_runtime_defines(target.triple), manifest.defines, *(c.defines for c in done))
    for chunk in (manifest, *done):
        check_provided(chunk.imports, provided, chunk.name)
    remember_parts(ruleset, target.triple, [("runtime", runtime_ir(target.triple)),
                                            (manifest.name, manifest.ir_text), *((c.name, c.ir_text) for c in done)])
    return [manifest, *done]


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
        self.process = subprocess.Popen([sys.executable, "-m", "farm.compiler.parallel"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
        self.busy = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, request: bytes, indices: list[int]) -> None:
        assert self.process.stdin is not None
        self.busy = True
        try:
            _write(self.process.stdin, request)
            _write(self.process.stdin, pickle.dumps(indices))
        except OSError:
            raise self._died() from None

    def receive(self) -> list[CompiledChunk]:
        assert self.process.stdout is not None
        reply = _read(self.process.stdout)
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

    def _died(self) -> StageFailed:
        self.process.kill()
        code = self.process.wait()
        return StageFailed("compile worker", code, "the worker process compiling chunks in parallel exited "
                                                   "(its error, if any, is on this process's stderr)")


def _workers(count: int) -> list[_Worker]:
    """`count` live workers: the ones started before, and new ones for those that died."""
    _WORKERS[:] = [w for w in _WORKERS if w.alive()]
    while len(_WORKERS) < count:
        _WORKERS.append(_Worker())
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
    """A worker's life: a request (the ruleset, target, -O and code model; then chunk indices) in, the compiled
    chunks (or the FarmError that stopped them) out; until stdin closes."""
    from farm.compiler.toolchain import emit_module

    while (request := _read(requests)) is not None and (indices := _read(requests)) is not None:
        ruleset, target, opt_level, code_model = pickle.loads(request)
        codegen = LLVMCodegen(ruleset, target.triple)
        chunks = codegen.chunks()

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
    """The worker's entry point. Replies go out on a copy of stdout, and stdout itself is pointed at stderr:
    nothing printed along the way can corrupt a reply."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; stdin closing ends this
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    from farm.compiler import parallel  # the classes a reply pickles are this module's, not __main__'s

    parallel.main()


__all__ = ["MIN_CHUNKS", "CompiledChunk", "compile_chunks", "worth_it"]
