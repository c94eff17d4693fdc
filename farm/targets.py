"""Registry of CPU targets: triple, CPU and features for llc, and what a host must have to run the code."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache

from farm.errors import UnsupportedTarget

_X86_V2 = frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})
_X86_V3 = _X86_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


@dataclass(frozen=True)
class Target:
    """A CPU target: what llc compiles for (triple, CPU, features), and the CPU flags a host needs to run it."""

    name: str
    triple: str
    cpu: str
    features: str = ""
    required_flags: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def arch(self) -> str:
        return self.triple.split("-", 1)[0]


X86 = "x86_64-unknown-linux-gnu"
ARM = "aarch64-unknown-linux-gnu"
REGISTRY: dict[str, Target] = {t.name: t for t in [
    Target("x86-64", X86, "x86-64"),
    Target("x86-64-v2", X86, "x86-64-v2", required_flags=_X86_V2),
    Target("x86-64-v3", X86, "x86-64-v3", required_flags=_X86_V3),
    Target("x86-64-v4", X86, "x86-64-v4", required_flags=_X86_V4),
    Target("aarch64", ARM, "generic"),
    Target("aarch64-neoverse-n1", ARM, "neoverse-n1"),
]}


def target_names() -> list[str]:
    return [*REGISTRY, "native"]


def resolve(name: str, llc: str | None = None) -> Target:
    """A registered target, or `native`: this host's triple and the CPU llc reports for it."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name != "native":
        raise UnsupportedTarget(f"unknown target {name!r}; known targets: {', '.join(target_names())}")
    arch = os.uname().machine  # platform.machine(), without importing platform
    triple = {"x86_64": X86, "aarch64": ARM, "arm64": ARM}.get(arch)
    if triple is None:
        raise UnsupportedTarget(f"no native target for host architecture {arch!r}")
    return Target("native", triple, host_cpu(llc) if llc else "generic" if triple == ARM else "x86-64",
                  required_flags=frozenset(host_flags()))


@cache
def host_cpu(llc: str) -> str:
    import subprocess  # not for a cache hit: farm/compiler/tools.py remembers the answer

    out = subprocess.run([llc, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"Host CPU:\s*(\S+)", out)
    return m.group(1) if m and m.group(1) != "(unknown)" else "generic"


@cache
def host_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def host_can_run(target: Target) -> bool:
    machine = os.uname().machine
    arch = {"arm64": "aarch64"}.get(machine, machine)
    return target.arch == arch and target.required_flags <= host_flags()


def missing_flags(target: Target) -> list[str]:
    return sorted(target.required_flags - host_flags())
