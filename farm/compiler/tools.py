"""The toolchain's identity, which every cache key names: where each tool is, its version, the host's CPU as llc
names it, and the keys computed from them. Asked of each binary once and remembered on disk by its identity, so
that a cache hit learns all of it without running a tool (and without importing what builds: farm/compiler/
toolchain.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path

from farm.compiler.codegen.abi import ABI_VERSION
from farm.config import COMPILE_PATHS
from farm.errors import InvalidArgument, ToolNotFound
from farm.targets import Target, host_cpu, host_flags, resolve

LLVM_MAJOR = 16
# compile stage -> (tool basename, Debian package); FARM_<TOOL> overrides a tool's path
TOOLS: dict[str, tuple[str, str]] = {
    "llvm-as": ("llvm-as", f"llvm-{LLVM_MAJOR}"),
    "opt": ("opt", f"llvm-{LLVM_MAJOR}"),
    "llc": ("llc", f"llvm-{LLVM_MAJOR}"),
    "as": ("llvm-mc", f"llvm-{LLVM_MAJOR}"),
}
PACKAGES = {tool: pkg for tool, pkg in TOOLS.values()} | {"ld.lld": f"lld-{LLVM_MAJOR}"}


def _tool_variable(tool: str) -> str:
    """The environment variable that overrides a tool's path: FARM_LLC, FARM_LLVM_AS, FARM_LD_LLD, ..."""
    return "FARM_" + tool.upper().replace("-", "_").replace(".", "_")


@cache
def find_tool(tool: str) -> str:
    """FARM_<TOOL> override, then the versioned Debian name, then the plain name on PATH."""
    variable = _tool_variable(tool)
    override = os.environ.get(variable)
    if override:
        found = shutil.which(override)
        if found:
            return found
        raise ToolNotFound(tool, PACKAGES[tool], variable, override)
    for candidate in (f"{tool}-{LLVM_MAJOR}", f"/usr/lib/llvm-{LLVM_MAJOR}/bin/{tool}", tool):
        found = shutil.which(candidate)
        if found:
            return found
    raise ToolNotFound(tool, PACKAGES[tool], variable)


@cache
def tool_version(path: str) -> str:
    """A tool's version, remembered on disk by the binary's identity (path, size, mtime): asking five tools
    `--version` costs a new process about 100 ms that a cache hit should not pay."""
    return _remembered(path, lambda: _ask_version(path))


def _ask_version(path: str) -> str:
    import subprocess

    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    m = re.search(r"(?:LLVM|LLD) (?:version )?(\d+\.\d+\.\d+\S*)", text)
    return m.group(1) if m else text.strip().splitlines()[0] if text.strip() else "unknown"


def _remembered(path: str, ask: Callable[[], str], about: str = "version") -> str:
    """What `ask` says of the binary at `path` (`about` names the question), remembered on disk by that binary's
    identity (its real path, size and mtime, as ccache's compiler check): a new binary is asked again, the same
    one never twice."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    identity = f"{real}:{stat.st_size}:{stat.st_mtime_ns}:{about}"
    memo = _VERSION_MEMO / hashlib.sha256(identity.encode()).hexdigest()[:32]
    try:
        return memo.read_text(encoding="utf-8")
    except OSError:
        pass
    version = ask()
    with contextlib.suppress(OSError):  # the memo is an optimisation; an unwritable home is not an error
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}")
        tmp.write_text(version, encoding="utf-8")
        os.replace(tmp, memo)
    return version


_VERSION_MEMO = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "farm" / "tool-versions"


@cache
def _inprocess_compiler() -> str:
    """llvmlite's version and the LLVM inside it, remembered by the identity of its shared library: asking means
    loading LLVM (tens of ms), which a cache hit should not pay."""
    from importlib.util import find_spec

    spec = find_spec("llvmlite")  # found, not imported
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'llvmlite'", name="llvmlite")
    library = next(Path(spec.origin).parent.joinpath("binding").glob("libllvmlite.*"), Path(spec.origin))
    return _remembered(str(library), _ask_llvmlite)


def _ask_llvmlite() -> str:
    import llvmlite
    import llvmlite.binding as llvm

    return f"llvmlite={llvmlite.__version__}/LLVM={'.'.join(map(str, llvm.llvm_version_info))}"


@cache
def native_target() -> Target:
    """`resolve("native")` with the CPU llc reports for this host, remembered by llc's identity and this host's
    (name and CPU flags), so that a new process does not run llc to learn it."""
    llc = find_tool("llc")
    host = f"{os.uname().nodename}:{' '.join(sorted(host_flags()))}"  # the host name, as socket.gethostname()
    return dataclasses.replace(resolve("native"), cpu=_remembered(llc, lambda: host_cpu(llc), f"host-cpu:{host}"))


def tool_versions(compile_path: str = "staged") -> dict[str, str]:
    """Everything that can change the object code: part of every cache key. Cheap once each binary was asked (a
    stat and a small read per tool), so a cache hit can afford it."""
    if compile_path not in COMPILE_PATHS:
        raise InvalidArgument("compile_path", compile_path, f"one of {', '.join(COMPILE_PATHS)}")
    link = f"ld.lld={tool_version(find_tool('ld.lld'))}"
    if compile_path == "inprocess":
        return {"path": "inprocess", "compile": _inprocess_compiler(), "ld": link}
    versions = {stage: f"{tool}={tool_version(find_tool(tool))}" for stage, (tool, _) in TOOLS.items()}
    return {"path": "staged", **versions}


def cache_key(ir_text: str, target: Target, opt_level: int, versions: dict[str, str]) -> str:
    """Content key: everything that can change the bytes of the .so."""
    h = hashlib.sha256()
    for part in (f"abi={ABI_VERSION}", target.triple, target.cpu, target.features, f"O{opt_level}",
                 *(f"{k}:{v}" for k, v in sorted(versions.items())), ir_text):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def artifact_key(parts: list[tuple[str, str]], target: Target, opt_level: int, versions: dict[str, str]) -> str:
    """The key of the library linked from these modules (names and texts, in link order)."""
    return cache_key("\0".join(f"{name}\n{text}" for name, text in parts), target, opt_level, versions)
