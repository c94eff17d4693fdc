"""The staged LLVM toolchain: llvm-as -> opt -> llc -> as (llvm-mc) -> ld.lld, each stage timed and bounded."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from farm.compiler.elf_policy import check_library
from farm.compiler.policy import (
    check_module,
    check_size,
    defined_function_names,
    defined_functions,
    parse_bitcode,
    parse_ir,
)
from farm.compiler.tools import TOOLS, cache_key, find_tool, tool_versions
from farm.config import COMPILE_PATHS
from farm.errors import InvalidArgument, StageFailed, StageTimeout, WorkDirError
from farm.targets import Target


@dataclass
class BuildResult:
    so_path: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    objects_compiled: int = 0
    objects_reused: int = 0


class ObjectCache:
    """Compiled objects of one node, by content key: a changed rule recompiles its own object only."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.o"

    def get(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.exists() else None

    def digest_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.sha256"

    def put(self, key: str, source: Path | bytes) -> Path:
        """The object, then the sha256 of its bytes beside it (what `verified` checks)."""
        from farm.files import atomic_write

        data = source if isinstance(source, bytes) else source.read_bytes()
        atomic_write(self.path(key), data=data)
        atomic_write(self.digest_path(key), data=hashlib.sha256(data).hexdigest().encode())
        return self.path(key)

    def verified(self, key: str) -> bytes | None:
        """The object's bytes, if they are the ones put: an in-process JIT takes an object as it is, and a truncated
        or altered one can crash the process (ld.lld refuses one with an error). None: missing, or not those bytes."""
        path = self.get(key)
        try:
            data = path.read_bytes() if path is not None else None
            recorded = self.digest_path(key).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return data if data is not None and hashlib.sha256(data).hexdigest() == recorded else None


T = TypeVar("T")
R = TypeVar("R")

# Who hears of a build's progress in this thread (or task): (step, modules done, modules in all).
_PROGRESS: ContextVar[Callable[[str, int, int], None] | None] = ContextVar("farm_build_progress", default=None)


@contextmanager
def reporting_progress(report: Callable[[str, int, int], None]) -> Iterator[None]:
    """Within the block, builds in this thread report each module parsed and each module compiled, so a large
    ruleset's minutes of compiling show progress (`farm compile` draws a bar). A build that reuses every
    object reports nothing."""
    token = _PROGRESS.set(report)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclass
class Toolchain:
    """Compiles modules to objects (staged tools or in-process llvmlite), caches them, links a .so."""

    work_dir: Path
    stage_timeout: float = 120.0
    memory_limit: int = 4 << 30  # address-space cap per stage, bytes
    compile_path: str = "staged"
    object_cache: ObjectCache | None = None

    def __post_init__(self) -> None:
        if self.compile_path not in COMPILE_PATHS:
            raise InvalidArgument("compile_path", self.compile_path, f"one of {', '.join(COMPILE_PATHS)}")
        self._swept = False  # stale build dirs are looked for once, at this toolchain's first build

    def build_parts(self, parts: list[tuple[str, str]], target: Target, opt_level: int) -> BuildResult:
        """Compile each module (reusing cached objects) and link them into one shared library, in a fresh
        temp dir under work_dir; the caller moves the .so where it belongs."""
        if not 0 <= opt_level <= 3:
            raise InvalidArgument("opt_level", opt_level, "an integer from 0 to 3")
        versions = tool_versions(self.compile_path)
        tmp = self._temp_dir()
        result = BuildResult(tmp / "module.so", versions=versions)
        try:
            objects: list[Path | None] = []
            pending: list[tuple[int, str, str, str]] = []  # (index, name, text, key) of the modules to compile
            for name, text in parts:
                key = cache_key(text, target, opt_level, versions)
                cached = self.object_cache.get(key) if self.object_cache else None
                if cached is None:
                    check_size(text, name)  # before any parser or tool sees it
                    pending.append((len(objects), name, text, key))
                else:
                    result.objects_reused += 1
                objects.append(cached)
            if pending:
                self._compile_pending(pending, parts, objects, target, opt_level, tmp, result)
            ld = find_tool("ld.lld")
            # Written, not mmapped: on a full disk a write fails with ENOSPC (a clear error), where a store
            # into a mapped output file kills ld.lld with SIGBUS.
            result.stage_seconds["ld"] = self._run("ld", [ld, "-shared", "-Bsymbolic", "--build-id=none",
                                                          "--no-mmap-output-file", "-o", "module.so",
                                                          *map(str, objects)], tmp)
            check_library(result.so_path)  # what the linked code really imports, libcalls included
        except BaseException:
            remove_build_dir(result)  # a failed build leaves no partial files behind
            raise
        return result

    def _temp_dir(self) -> Path:
        """A fresh build dir named after its owner (build_dir_prefix), after removing those of dead owners."""
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            if not self._swept:
                remove_stale_build_dirs(self.work_dir)
                self._swept = True
            return Path(tempfile.mkdtemp(prefix=build_dir_prefix(), dir=self.work_dir))
        except OSError as exc:
            raise WorkDirError(f"cannot write the work directory {self.work_dir}: {exc.strerror or exc}") from None

    def _compile_pending(self, pending: list[tuple[int, str, str, str]], parts: list[tuple[str, str]],
                         objects: list[Path | None], target: Target, opt_level: int, tmp: Path,
                         result: BuildResult) -> None:
        """Parse every module to compile, learn from those parses (and from the reused modules' texts) what the
        library defines, then check and compile each parsed module: each is parsed once, and the check sees
        the very module that is compiled."""
        seconds: dict[str, float] = {}
        report = _PROGRESS.get()

        if self.compile_path == "staged":  # llvm-as for every module, side by side (processes of their own)
            def assemble(job: tuple[int, str, str, str]) -> dict[str, float]:
                own: dict[str, float] = {}
                self._assemble(job[2], tmp, job[1], own)
                return own

            for done, own in enumerate(self._each_finished(assemble, pending), 1):
                _add(seconds, own)
                if report:
                    report("assembling", done, len(pending))
        modules = []  # in this thread: LLVM's context is not to be shared between threads
        for _, name, text, _ in pending:
            modules.append(self._parse(text, tmp, name, seconds))
            if report:
                report("parsing", len(modules), len(pending))
        compiled = {index for index, *_ in pending}
        provided = frozenset().union(*map(defined_function_names, modules),
                                     *(defined_functions(text) for k, (_, text) in enumerate(parts)
                                       if k not in compiled))
        start = time.perf_counter()
        for (_, name, _, _), module in zip(pending, modules, strict=True):
            check_module(module, name, provided)
        seconds["policy"] = seconds.get("policy", 0.0) + time.perf_counter() - start

        def finish(job: tuple[tuple[int, str, str, str], Any]) -> tuple[int, str, Path, dict[str, float]]:
            (index, name, _, key), module = job
            own: dict[str, float] = {}
            return index, key, self._finish(module, target, opt_level, tmp, name, own), own

        for index, key, obj, own in self._each_finished(finish, list(zip(pending, modules, strict=True))):
            _add(seconds, own)
            objects[index] = self.object_cache.put(key, obj) if self.object_cache else obj
            result.objects_compiled += 1
            if report:
                report("compiling", result.objects_compiled, len(pending))
        result.stage_seconds.update(seconds)

    def _each_finished(self, finish: Callable[[T], R], jobs: list[T]) -> Iterator[R]:
        """finish(job) for each job, as each is done. The staged tools are processes of their own, so modules
        go through them side by side, one per core (a 1000-rule ruleset is a few dozen modules); the in-process
        path holds the interpreter lock and goes one module at a time. Stage times add up across modules, as
        before: CPU seconds per stage, not wall time."""
        workers = min(len(jobs), os.cpu_count() or 1) if self.compile_path == "staged" else 1
        if workers <= 1:
            yield from map(finish, jobs)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="farm-stage") as pool:
            futures = [pool.submit(finish, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:  # a failed module: the modules not started yet are not compiled
                for future in futures:
                    future.cancel()

    def _assemble(self, ir_text: str, tmp: Path, name: str, seconds: dict[str, float]) -> None:
        """Staged: llvm-as-16 parses the text (under the stage limits) into `name`.bc."""
        try:
            (tmp / f"{name}.ll").write_text(ir_text, encoding="utf-8")
        except OSError as exc:
            raise WorkDirError(f"cannot write the work directory {tmp}: {exc.strerror or exc}") from None
        seconds["llvm-as"] = seconds.get("llvm-as", 0.0) + self._run(
            "llvm-as", [find_tool("llvm-as"), f"{name}.ll", "-o", f"{name}.bc"], tmp, consumed=f"{name}.ll")

    def _parse(self, ir_text: str, tmp: Path, name: str, seconds: dict[str, float]) -> Any:
        """The module as LLVM parses it. Staged: the bitcode llvm-as wrote (_assemble) is read back, so the check
        sees what opt will compile (llvmlite's LLVM 22 reads LLVM 16's bitcode: bitcode is backward compatible,
        upgraded as any newer reader would)."""
        start = time.perf_counter()
        if self.compile_path == "inprocess":
            module = parse_ir(ir_text, name)
            seconds["parse"] = seconds.get("parse", 0.0) + time.perf_counter() - start
            return module
        module = parse_bitcode(self._read(tmp / f"{name}.bc"), name)
        seconds["policy"] = seconds.get("policy", 0.0) + time.perf_counter() - start  # read only for the check
        return module

    def _finish(self, module: Any, target: Target, opt_level: int, tmp: Path, name: str,
                seconds: dict[str, float]) -> Path:
        """The checked module's object: in process from the module itself; staged from the same .bc file."""
        if self.compile_path == "inprocess":
            data, stage_seconds = emit_module(module, target, opt_level)
            _add(seconds, stage_seconds)
            try:
                (tmp / f"{name}.o").write_bytes(data)
            except OSError as exc:
                raise WorkDirError(f"cannot write {tmp / name}.o: {exc.strerror or exc}") from None
            return tmp / f"{name}.o"
        tools = {stage: find_tool(tool) for stage, (tool, _) in TOOLS.items()}
        mattr = [f"-mattr={target.features}"] if target.features else []
        commands = {  # stage: (its input, its command)
            "opt": (f"{name}.bc", [tools["opt"], f"-O{opt_level}", f"{name}.bc", "-o", f"{name}.opt.bc"]),
            "llc": (f"{name}.opt.bc", [tools["llc"], f"-O{opt_level}", f"-mtriple={target.triple}",
                                       f"-mcpu={target.cpu}", *mattr, "-relocation-model=pic", "-filetype=asm",
                                       f"{name}.opt.bc", "-o", f"{name}.s"]),
            "as": (f"{name}.s", [tools["as"], f"-triple={target.triple}", "-filetype=obj", f"{name}.s", "-o",
                                 f"{name}.o"]),
        }
        _add(seconds, {stage: self._run(stage, argv, tmp, consumed) for stage, (consumed, argv) in commands.items()})
        return tmp / f"{name}.o"

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise WorkDirError(f"cannot read {path}: {exc.strerror or exc}") from None

    def _run(self, stage: str, argv: list[str], cwd: Path, consumed: str = "") -> float:
        """Run one stage in `cwd`; its input file `consumed` goes once it succeeded, so the work directory holds
        one stage's input and output at a time, not the whole chain's files."""
        start = time.perf_counter()
        try:
            timeout = self.stage_timeout if self.stage_timeout < _NO_TIMEOUT else None
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=_limits(self.memory_limit, self.stage_timeout), check=False)
        except subprocess.TimeoutExpired:
            raise StageTimeout(stage, self.stage_timeout) from None
        except OSError as exc:
            raise WorkDirError(f"cannot run {stage} in {cwd}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            stderr = proc.stderr
            if "No space left" in stderr or "Permission denied" in stderr:
                raise WorkDirError(f"{stage} could not write in {cwd}: {stderr.strip()}")
            raise StageFailed(stage, proc.returncode, stderr)
        if consumed:
            (cwd / consumed).unlink(missing_ok=True)
        return time.perf_counter() - start


def _limits(memory: int, seconds: float) -> Callable[[], None]:
    def apply() -> None:
        _lower_limit(resource.RLIMIT_AS, memory)
        _lower_limit(resource.RLIMIT_CPU, int(seconds) + 1)
    return apply


# Python's clock holds ~292 years in nanoseconds: a stage timeout beyond this many seconds means none (a wait
# that long overflows it: OverflowError)
_NO_TIMEOUT = 1e9
_RLIMIT_MAX = (1 << 63) - 1  # the largest finite limit setrlimit takes; a larger setting means no limit


def _lower_limit(kind: int, value: int) -> None:
    """Cap a resource at `value`, or at the hard limit this process already has if that is lower (raising a
    hard limit is not allowed: asking would fail the stage instead of running it under the tighter cap). A
    value no rlimit can hold (FARM_STAGE_TIMEOUT=1e20) leaves the hard limit in place: it would otherwise fail
    the stage in the child, before exec, with a SubprocessError."""
    _, hard = resource.getrlimit(kind)
    if value > _RLIMIT_MAX:
        value = hard
    elif hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def remove_build_dir(result: BuildResult) -> None:
    shutil.rmtree(result.so_path.parent, ignore_errors=True)


# build-<host>-<pid>-<mkdtemp suffix>: the host, because a work dir may be shared (NFS) by several machines
# whose pids mean nothing to each other. The host is escaped one-to-one (_host): it is part of a path.
BUILD_DIR = re.compile(r"build-(?P<host>[A-Za-z0-9._]+)-(?P<pid>[0-9]+)-[A-Za-z0-9_]{8}")


def _host(name: str | None = None) -> str:
    """The host's name as a path part, escaped one-to-one (`_` and every byte outside [A-Za-z0-9.] as `_XX`):
    two hosts sharing a work dir never take each other's build dirs for their own."""
    raw = (socket.gethostname() if name is None else name).encode() or b"localhost"
    return "".join(chr(b) if chr(b).isascii() and (chr(b).isalnum() or b == 0x2E) else f"_{b:02x}" for b in raw)


def build_dir_prefix() -> str:
    return f"build-{_host()}-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:  # not a pid this system can have: not one of ours, leave the dir alone
        return True
    return True


def remove_stale_build_dirs(work_dir: Path) -> list[Path]:
    """Remove the build dirs that a process of this host and user left when it died (killed mid-compile).
    Only names matching BUILD_DIR, real directories (not symlinks) owned by this user, whose pid no longer
    exists: a live build, another host's build, or anything else in the directory is left alone. A reused
    pid only keeps a stale dir until that process ends too. One listdir of the work dir: cheap."""
    host, uid, removed = _host(), os.getuid(), []
    with os.scandir(work_dir) as entries:
        for entry in entries:
            match = BUILD_DIR.fullmatch(entry.name)
            if match is None or match["host"] != host or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != uid or _process_alive(int(match["pid"])):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


_llvm_ready = False
_MACHINES: dict[tuple[str, str, str, int, str], tuple[Any, Any]] = {}


def ready_llvm() -> None:
    """LLVM's targets and assembly printers registered, once per process (before the first emit)."""
    import llvmlite.binding as llvm

    global _llvm_ready
    if not _llvm_ready:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        _llvm_ready = True


def _machine(target: Target, opt_level: int, code_model: str) -> tuple[Any, Any]:
    """One target machine and pass builder per (triple, CPU, features, level, code model), reused for every
    module."""
    import llvmlite.binding as llvm

    key = (target.triple, target.cpu, target.features, opt_level, code_model)
    if key not in _MACHINES:
        machine = llvm.Target.from_triple(target.triple).create_target_machine(
            cpu=target.cpu, features=target.features, opt=opt_level, codemodel=code_model,
            reloc="static" if code_model == "large" else "pic")  # large: absolute addresses, for a JIT
        tuning = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        _MACHINES[key] = (machine, llvm.create_pass_builder(machine, tuning) if opt_level else None)
    return _MACHINES[key]


def _add(total: dict[str, float], more: dict[str, float]) -> None:
    for stage, value in more.items():
        total[stage] = total.get(stage, 0.0) + value


def emit_object_in_process(ir_text: str, target: Target, opt_level: int, source: str = "module",
                           provided: frozenset[str] = frozenset(),
                           code_model: str = "default") -> tuple[bytes, dict[str, float]]:
    """The fast path for one module: parse, check, optimise at the same level and emit the object for the same
    triple and CPU, all inside this process through llvmlite; the load policy checks the very module that is
    then optimised and emitted. `provided`: functions the other modules linked with this one define. Errors
    carry LLVM's message like the staged tools'."""
    start = time.perf_counter()
    module = parse_ir(ir_text, source)
    seconds = {"parse": time.perf_counter() - start}
    start = time.perf_counter()
    check_module(module, source, provided)
    seconds["policy"] = time.perf_counter() - start
    data, more = emit_module(module, target, opt_level, code_model)
    return data, seconds | more


def emit_module(module: Any, target: Target, opt_level: int,
                code_model: str = "default") -> tuple[bytes, dict[str, float]]:
    """Optimise and emit a parsed module the policy has already checked. code_model "large" for objects an
    in-process JIT links (farm/runtime/inmemory.py)."""

    ready_llvm()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    machine, builder = _machine(target, opt_level, code_model)
    if builder is not None:
        builder.getModulePassManager().run(module, builder)
    seconds["opt"] = time.perf_counter() - start
    start = time.perf_counter()
    data = machine.emit_object(module)
    seconds["codegen"] = time.perf_counter() - start
    return data, seconds
