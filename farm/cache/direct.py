"""Direct-mode keys, as ccache's direct mode: a hash of what a ruleset's library is made from (the ruleset's
fingerprint, the code generator's version, the target, -O, the compile path and the tools' versions), which the
index maps to the library's content key. A request looks it up first; on a hit the library is fetched, verified and
loaded without generating any IR. On a miss the IR is generated and keyed by its content, which stays the
artifact's identity (farm.compiler.tools.artifact_key), and the direct entry is recorded for the next request.

The code generator's version is a hash of the source files that shape the IR (CODEGEN_SOURCES; the IR is printed
by farm's own writer, farm/compiler/codegen/textir.py), read here: no version number to bump by hand, and a change
to any of them misses every direct key. Such a miss costs one code generation, not a build: IR that came out the
same finds its library by content key. So the list errs on the side of too much (a file that does not change the
IR costs one code generation after an edit; one missing from it would serve a library built from other IR), and
tests/test_direct.py checks that it covers every farm module the code generator imports.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from farm.targets import Target

FARM = Path(__file__).resolve().parent.parent

# Relative to farm/: a directory stands for its *.py files. What farm.compiler.codegen.llvm imports, and so what
# decides the IR of a ruleset; farm.errors is left out (messages only).
CODEGEN_SOURCES = ("compiler/codegen", "compiler/matchprog.py", "compiler/matchtree.py", "lang", "semantics",
                   "trampoline.py")


def source_files(root: Path = FARM) -> list[Path]:
    files: list[Path] = []
    for name in CODEGEN_SOURCES:
        path = root / name
        # iterdir, not glob: the same *.py files, without compiling a pattern (a hit computes this)
        files.extend(sorted(p for p in path.iterdir() if p.suffix == ".py") if path.is_dir() else [path])
    return files


def codegen_version(root: Path = FARM) -> str:
    """The hash of the code generator's sources under `root` (see the module's note)."""
    h = hashlib.sha256()
    for path in source_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@cache
def this_codegen_version() -> str:
    """codegen_version() of this installation, computed once per process (about a millisecond)."""
    return codegen_version()


def direct_key(fingerprint: str, target: Target, opt_level: int, versions: dict[str, str],
               codegen: str | None = None) -> str:
    """The direct-mode key of a ruleset's library. `versions` (farm.compiler.tools.tool_versions) name the
    compile path and its tools; `codegen` defaults to this installation's code generator."""
    h = hashlib.sha256()
    for part in ("direct-1", fingerprint, codegen or this_codegen_version(), target.name, target.triple, target.cpu,
                 target.features, f"O{opt_level}", *(f"{k}:{v}" for k, v in sorted(versions.items()))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()
