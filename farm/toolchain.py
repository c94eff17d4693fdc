"""The staged LLVM toolchain: llvm-as -> opt -> llc -> as (llvm-mc) -> ld.lld, each stage timed and bounded."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from farm.codegen.llvm import ABI_VERSION
from farm.errors import StageFailed, StageTimeout, ToolNotFound, WorkDirError
from farm.targets import Target

LLVM_MAJOR = 16
# stage -> (tool basename, Debian package, environment override)
TOOLS: dict[str, tuple[str, str]] = {
    "llvm-as": ("llvm-as", f"llvm-{LLVM_MAJOR}"),
    "opt": ("opt", f"llvm-{LLVM_MAJOR}"),
    "llc": ("llc", f"llvm-{LLVM_MAJOR}"),
    "as": ("llvm-mc", f"llvm-{LLVM_MAJOR}"),
    "ld": ("ld.lld", f"lld-{LLVM_MAJOR}"),
}
STAGES = list(TOOLS)


def _env_name(tool: str) -> str:
    return "FARM_" + tool.upper().replace("-", "_").replace(".", "_")


@cache
def find_tool(tool: str) -> str:
    """FARM_<TOOL> override, then the versioned Debian name, then the plain name on PATH."""
    package = next(pkg for name, pkg in TOOLS.values() if name == tool)
    override = os.environ.get(_env_name(tool))
    if override:
        if shutil.which(override):
            return shutil.which(override)  # type: ignore[return-value]
        raise ToolNotFound(f"{tool} (FARM_{_env_name(tool)[5:]}={override})", package)
    for candidate in (f"{tool}-{LLVM_MAJOR}", f"/usr/lib/llvm-{LLVM_MAJOR}/bin/{tool}", tool):
        found = shutil.which(candidate)
        if found:
            return found
    raise ToolNotFound(tool, package)


@cache
def tool_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    m = re.search(r"(?:LLVM|LLD) (?:version )?(\d+\.\d+\.\d+\S*)", text)
    return m.group(1) if m else text.strip().splitlines()[0] if text.strip() else "unknown"


def tool_versions() -> dict[str, str]:
    return {stage: f"{tool}={tool_version(find_tool(tool))}" for stage, (tool, _) in TOOLS.items()}


def cache_key(ir_text: str, target: Target, opt_level: int, versions: dict[str, str]) -> str:
    """Content key: everything that can change the bytes of the .so."""
    h = hashlib.sha256()
    for part in (f"abi={ABI_VERSION}", target.triple, target.cpu, target.features, f"O{opt_level}",
                 *(f"{k}:{v}" for k, v in sorted(versions.items())), ir_text):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class BuildResult:
    so_path: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())


@dataclass
class Toolchain:
    work_dir: Path
    stage_timeout: float = 120.0
    memory_limit: int = 4 << 30  # address-space cap per stage, bytes

    def build(self, ir_text: str, target: Target, opt_level: int) -> BuildResult:
        """Run every stage in a fresh temp dir under work_dir; the caller moves the .so where it belongs."""
        if not 0 <= opt_level <= 3:
            raise ValueError(f"optimisation level must be 0..3, not {opt_level}")
        tools = {stage: find_tool(tool) for stage, (tool, _) in TOOLS.items()}
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix="build-", dir=self.work_dir))
            (tmp / "module.ll").write_text(ir_text, encoding="utf-8")
        except OSError as exc:
            raise WorkDirError(f"cannot write the work directory {self.work_dir}: {exc.strerror or exc}") from None
        mattr = [f"-mattr={target.features}"] if target.features else []
        commands = {
            "llvm-as": [tools["llvm-as"], "module.ll", "-o", "module.bc"],
            "opt": [tools["opt"], f"-O{opt_level}", "module.bc", "-o", "opt.bc"],
            "llc": [tools["llc"], f"-O{opt_level}", f"-mtriple={target.triple}", f"-mcpu={target.cpu}", *mattr,
                    "-relocation-model=pic", "-filetype=asm", "opt.bc", "-o", "module.s"],
            "as": [tools["as"], f"-triple={target.triple}", "-filetype=obj", "module.s", "-o", "module.o"],
            "ld": [tools["ld"], "-shared", "--build-id=none", "-o", "module.so", "module.o"],
        }
        result = BuildResult(tmp / "module.so", versions=tool_versions())
        try:
            for stage, argv in commands.items():
                result.stage_seconds[stage] = self._run(stage, argv, tmp)
        except BaseException:
            remove_build_dir(result)  # a failed build leaves no partial files behind
            raise
        return result

    def _run(self, stage: str, argv: list[str], cwd: Path) -> float:
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=self.stage_timeout,
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
        return time.perf_counter() - start


def _limits(memory: int, seconds: float) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    return apply


def remove_build_dir(result: BuildResult) -> None:
    shutil.rmtree(result.so_path.parent, ignore_errors=True)
