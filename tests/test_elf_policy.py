"""The ELF load policy against what the dynamic loader obeys. farm's own libraries pass, and the facts the check
reads (tags, needed, imports, ifuncs, relocation types) are the ones pyelftools reads. Hostile libraries, each
payload built with gcc and ld.lld and hidden from a section-header reader in several ways, are refused by
check_library and by open_library in a separate process, and the canary their payload would create (a file
in the directory the process loads from) proves that nothing ran. Byte-patched copies of farm's libraries
(x86-64 and aarch64) cover what a linker will not emit, and truncated or corrupted files are refused as such."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_D_TAG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import farm.compiler.codegen.abi
import farm.runtime.loader
from farm.cache.engine import Engine
from farm.compiler.elf_policy import (
    ALLOWED_RELOCATIONS,
    DT_NEEDED,
    EM_AARCH64,
    EM_X86_64,
    LoaderView,
    check_library,
    read_library,
)
from farm.compiler.toolchain import Toolchain
from farm.config import FarmConfig
from farm.errors import MalformedLibrary, PolicyViolation, UnsafeLibrary
from farm.runtime.loader import open_library
from farm.targets import REGISTRY

from .conftest import EXAMPLES, ROOT, count_hostile, ruleset_of

# ---- the facts, read twice: by the check and by pyelftools ----


class Facts(NamedTuple):
    tags: list[int]
    needed: list[str]
    undefined: list[str]
    ifuncs: list[str]
    relocation_types: list[int]


def needed_of(view: LoaderView) -> list[str]:
    return [text for tag, text in view.strings if tag == DT_NEEDED]


def facts_of(view: LoaderView) -> Facts:
    return Facts(view.tags, needed_of(view), sorted(view.undefined.values()), sorted(view.ifuncs.values()),
                 sorted(r.type for r in view.relocations))


def reference_facts(path: Path) -> Facts:
    """The same facts from pyelftools' reading of the dynamic segment."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        dynamic = next(s for s in elf.iter_segments() if isinstance(s, DynamicSegment))
        tags = [ENUM_D_TAG.get(t.entry.d_tag, t.entry.d_tag) for t in dynamic.iter_tags()]
        needed = [t.needed for t in dynamic.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
        symbols = list(dynamic.iter_symbols())
        undefined = sorted(s.name for s in symbols if s["st_shndx"] == "SHN_UNDEF" and s.name)
        ifuncs = sorted(s.name for s in symbols if s["st_info"]["type"] in ("STT_LOOS", "STT_GNU_IFUNC"))
        types = sorted(r["r_info_type"] for table in dynamic.get_relocation_tables().values()
                       for r in table.iter_relocations())
    return Facts([t for t in tags if t != 0], needed, undefined, ifuncs, types)


# ---- farm's own libraries ----

POINTER_TABLE_IR = """declare ptr @malloc(i64)
define i64 @f(i64 %x) {
  ret i64 %x
}
@table = global [2 x ptr] [ptr @f, ptr @malloc]
define ptr @pick(i64 %i) {
  %p = getelementptr [2 x ptr], ptr @table, i64 0, i64 %i
  %q = load ptr, ptr %p
  ret ptr %q
}
define ptr @allocator() {
  ret ptr @malloc
}
"""


@pytest.fixture(scope="module")
def farm_libraries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Libraries as farm builds them: a ruleset for three targets on the staged path, two in process, and
    IR with a table of pointers (RELATIVE, 64 and GLOB_DAT relocations) through the toolchain."""
    root = tmp_path_factory.mktemp("farm-libs")
    ruleset = ruleset_of((EXAMPLES / "arith.farm").read_text(), "arith.farm")
    libraries = {}
    for path in ("staged", "inprocess"):
        engine = Engine(FarmConfig(cache_dir=root / path, compile_path=path))
        for target in (["x86-64", "x86-64-v3", "aarch64"] if path == "staged" else ["x86-64", "aarch64"]):
            libraries[f"arith-{path}-{target}"] = engine.compile(ruleset, "arith", target).path
    for target in ("x86-64", "aarch64"):
        built = Toolchain(root / "tc").build_parts([("module", POINTER_TABLE_IR)], REGISTRY[target], 1)
        libraries[f"pointers-{target}"] = built.so_path
    return libraries


FARM_LIBRARIES = ["arith-staged-x86-64", "arith-staged-x86-64-v3", "arith-staged-aarch64", "arith-inprocess-x86-64",
                  "arith-inprocess-aarch64", "pointers-x86-64", "pointers-aarch64"]


@pytest.mark.parametrize("name", FARM_LIBRARIES)
def test_farm_libraries_pass_and_read_as_pyelftools_reads_them(farm_libraries: dict[str, Path], name: str) -> None:
    path = farm_libraries[name]
    check_library(path)
    view = read_library(path)
    assert facts_of(view) == reference_facts(path)
    assert not needed_of(view) and not view.ifuncs
    assert set(view.undefined.values()) <= farm.compiler.codegen.abi.ALLOWED_IMPORTS
    assert {r.type for r in view.relocations} <= set(ALLOWED_RELOCATIONS[view.machine])
    if name.startswith("pointers"):  # the table really exercises the relocations the policy allows beyond PLT
        assert len({r.type for r in view.relocations}) >= 2


# ---- hostile libraries built with gcc and ld.lld ----

# Every payload touches ./canary with raw syscalls (no libc import to give it away); the loading process
# changes into the library's directory first, so a canary there means the payload ran.
PRELUDE = r"""
static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
__attribute__((unused)) static void touch(void) {
    long fd = sys3(2, (long)"canary", 0101, 0600);
    if (fd >= 0) sys3(3, fd, 0, 0);
}
long farm_abi_version(void) { return 0; }
"""
IFUNC = r"""
static long impl(void) { return 1; }
static void *resolve(void) { touch(); return (void *)impl; }
"""


@dataclass(frozen=True)
class Payload:
    source: str
    link: tuple[str, ...] = ("-Bsymbolic",)  # {dep}: a constructor library's path; {depdir}: where one is found
    reason: str = ""  # a regular expression the refusal must match
    pic: bool = True


PAYLOADS = {
    "needed": Payload("", ("-Bsymbolic", "{dep}"), r"loads '.*libdep\.so', whose constructors would run \(DT_NEEDED"),
    "rpath": Payload("", ("-Bsymbolic", "--disable-new-dtags", "-L{depdir}", "-ldep", "-rpath", "{depdir}"),
                     r"searches libraries in '.*' \(DT_RPATH\)"),
    "runpath": Payload("", ("-Bsymbolic", "--enable-new-dtags", "-L{depdir}", "-ldep", "-rpath", "{depdir}"),
                       r"searches libraries in '.*' \(DT_RUNPATH\)"),
    "auxiliary": Payload("", ("-Bsymbolic", "-f", "{dep}"), r"loads the auxiliary filter '.*' \(DT_AUXILIARY\)"),
    "filter": Payload("", ("-Bsymbolic", "-F", "{dep}"), r"loads the filtee '.*' \(DT_FILTER\)"),
    "init_array": Payload("__attribute__((constructor)) static void payload(void) { touch(); }",
                          reason=r"runs code on load \(DT_INIT_ARRAY"),
    "init": Payload("void payload(void) { touch(); }", ("-Bsymbolic", "-init=payload"),
                    r"runs code on load \(DT_INIT\)"),
    "fini_array": Payload("__attribute__((destructor)) static void payload(void) { touch(); }",
                          reason=r"runs code on unload \(DT_FINI_ARRAY"),
    "fini": Payload("void payload(void) { touch(); }", ("-Bsymbolic", "-fini=payload"),
                    r"runs code on unload \(DT_FINI\)"),
    "preinit_array": Payload("static void payload(void) { touch(); }\n__attribute__((section(\".preinit_array\"), "
                             "used)) static void (*run)(void) = payload;", reason=r"\(DT_PREINIT_ARRAY"),
    "ifunc": Payload(IFUNC + 'long exported(void) __attribute__((ifunc("resolve")));\nlong (*bound)(void) = exported;',
                     (), r"has ifunc symbols exported, whose resolvers run"),
    "irelative": Payload(IFUNC + '__attribute__((visibility("hidden"))) long hidden(void) '
                         '__attribute__((ifunc("resolve")));\nlong call(void) { return hidden(); }',
                         reason=r"has R_X86_64_IRELATIVE relocations"),
    "textrel": Payload("long data = 5;\nlong *where(void) { return &data; }", ("-Bsymbolic", "-z", "notext"),
                       r"text relocations .*\(DT_TEXTREL\)", pic=False),
    "execstack": Payload("", ("-Bsymbolic", "-z", "execstack"), r"asks for an executable stack"),
    "tls": Payload("__thread long t;\nlong get(void) { return t; }", reason=r"has a PT_TLS"),
    "import": Payload("extern int system(const char *);\nextern int unlink(const char *) __attribute__((weak));\n"
                      'long run(void) { return system("touch canary") + (unlink ? unlink("x") : 0); }',
                      reason=r"imports system, unlink; only"),
    "interpose": Payload("int creat(const char *p, int m) { return 0; }\n"
                         'long f(void) { return creat("canary", 0600); }', (),
                         r"binds its own creat by name"),
}
# How a payload is hidden from a reader of section headers; the loader ignores all of it.
RENAMES = [".init_array", ".fini_array", ".preinit_array", ".init", ".fini", ".dynsym", ".dynstr", ".dynamic",
           ".rela.dyn", ".rela.plt", ".tdata", ".tbss", ".hash", ".gnu.hash"]
HIDINGS = ["plain", "renamed", "retyped", "stripped"]
VARIANTS = [(payload, hiding) for payload in PAYLOADS for hiding in HIDINGS]

needs_x86_toolchain = pytest.mark.skipif(
    platform.machine() != "x86_64" or not all(map(shutil.which, ["gcc", "ld.lld-16", "llvm-objcopy-16"])),
    reason="hostile libraries are built with gcc, ld.lld-16 and llvm-objcopy-16 on x86-64")
CFLAGS = ["-O1", "-ffreestanding", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-builtin"]


def _run(*argv: str | Path, cwd: Path) -> None:
    subprocess.run([str(a) for a in argv], cwd=cwd, check=True, capture_output=True)


def _retype_sections(path: Path) -> None:
    """Every section header typed PROGBITS: a reader that looks for SHT_DYNSYM finds none."""
    data = bytearray(path.read_bytes())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    for index in range(1, shnum):
        struct.pack_into("<I", data, shoff + index * shentsize + 4, 1)
    path.write_bytes(bytes(data))


def _build_payload(root: Path, name: str, payload: Payload, dep: Path) -> Path:
    work = root / name
    work.mkdir()
    (work / "p.c").write_text(PRELUDE + payload.source + "\n")
    _run("gcc", "-c", "-fPIC" if payload.pic else "-fno-pic", *([] if payload.pic else ["-mcmodel=large"]),
         *CFLAGS, "p.c", "-o", "p.o", cwd=work)
    link = [a.format(dep=dep, depdir=dep.parent / "search") for a in payload.link]
    _run("ld.lld-16", "-shared", "--build-id=none", *link, "p.o", "-o", "lib.so", cwd=work)
    return work / "lib.so"


def _hide(plain: Path, hiding: str, into: Path) -> Path:
    into.mkdir()
    target = into / "lib.so"
    if hiding == "plain":
        shutil.copy(plain, target)
        return target
    if hiding == "stripped":
        _run("llvm-objcopy-16", "--strip-sections", plain, target, cwd=into)
        return target
    renames = [f"--rename-section={name}=.data.{i}" for i, name in enumerate(RENAMES)]
    _run("llvm-objcopy-16", *renames, plain, target, cwd=into)
    if hiding == "retyped":
        _retype_sections(target)
    return target


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "dep").mkdir()
    (root / "dep" / "d.c").write_text(PRELUDE + "__attribute__((constructor)) static void c(void) { touch(); }\n")
    _run("gcc", "-c", "-fPIC", *CFLAGS, "d.c", "-o", "d.o", cwd=root / "dep")
    # Without a soname, DT_NEEDED records the path as linked, so the loader finds it; -ldep records the soname,
    # which only the search path (DT_RPATH, DT_RUNPATH) finds.
    _run("ld.lld-16", "-shared", "d.o", "-o", "libdep.so", cwd=root / "dep")
    (root / "dep" / "search").mkdir()
    _run("ld.lld-16", "-shared", "-soname", "libdep.so", "d.o", "-o", "search/libdep.so", cwd=root / "dep")
    libraries = {}
    for name, payload in PAYLOADS.items():
        plain = _build_payload(root, name, payload, root / "dep" / "libdep.so")
        for hiding in HIDINGS:
            libraries[name, hiding] = _hide(plain, hiding, root / name / hiding)
    return libraries


LOADER_SCRIPT = """
import json, os, sys
from pathlib import Path
from farm.errors import PolicyViolation
from farm.runtime.loader import open_library
for lib in sys.argv[1:]:
    os.chdir(Path(lib).parent)  # a payload that runs leaves ./canary here
    try:
        open_library(Path(lib), None)
        outcome = "loaded"
    except PolicyViolation as exc:
        outcome = "refused: " + str(exc)
    print(json.dumps([lib, outcome]), flush=True)
"""


@pytest.fixture(scope="module")
def load_attempts(hostile: dict[tuple[str, str], Path]) -> dict[Path, str]:
    """open_library on every hostile library, in one separate process (were one loaded, its payload would run
    there, never in the test process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", LOADER_SCRIPT, *map(str, hostile.values())], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    outcomes = {Path(lib): outcome for lib, outcome in map(json.loads, proc.stdout.splitlines())}
    assert len(outcomes) == len(hostile), f"the loading process stopped early: {proc.stderr[-2000:]}"
    return outcomes


@needs_x86_toolchain
@pytest.mark.parametrize(("payload", "hiding"), VARIANTS)
def test_hostile_library_is_refused_before_anything_runs(hostile: dict[tuple[str, str], Path],
                                                         load_attempts: dict[Path, str], payload: str,
                                                         hiding: str) -> None:
    path = hostile[payload, hiding]
    with pytest.raises(UnsafeLibrary, match=PAYLOADS[payload].reason) as info:
        check_library(path)
    assert info.value.library == "lib.so" and str(info.value).startswith("lib.so is refused: ")
    assert load_attempts[path].startswith("refused: lib.so is refused: ")
    assert not (path.parent / "canary").exists(), f"the {payload} payload ran"
    count_hostile("hostile ELF", "built libraries refused, canary absent")


@needs_x86_toolchain
@pytest.mark.parametrize(("payload", "hiding"), VARIANTS)
def test_hostile_library_reads_as_pyelftools_reads_it(hostile: dict[tuple[str, str], Path], payload: str,
                                                      hiding: str) -> None:
    path = hostile[payload, hiding]
    assert facts_of(read_library(path)) == reference_facts(path)


# ---- byte-patched copies of farm's libraries: what a linker will not emit, for both machines ----

def _dynamic_entries(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """File offset of the dynamic table and its entries (farm's libraries map it 1:1 from the file)."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    for index in range(phnum):
        kind, _, offset = struct.unpack_from("<IIQ", data, phoff + 56 * index)
        if kind == 2:
            entries = []
            while (entry := struct.unpack_from("<qQ", data, offset + 16 * len(entries)))[0]:
                entries.append(entry)
            return offset, entries
    raise AssertionError("no PT_DYNAMIC")


def _program_header(data: bytes, kind: int) -> int:
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    return next(phoff + 56 * i for i in range(phnum) if struct.unpack_from("<I", data, phoff + 56 * i)[0] == kind)


def _retag(data: bytearray, old: int, new: int, value: int | None = None) -> None:
    at, entries = _dynamic_entries(bytes(data))
    index = [tag for tag, _ in entries].index(old)
    struct.pack_into("<qQ", data, at + 16 * index, new, entries[index][1] if value is None else value)


def _jump_slot_entry(data: bytes) -> int:
    """File offset of the first PLT relocation (farm's libraries: JMPREL maps 1:1 in the first segment)."""
    return dict(_dynamic_entries(data)[1])[23]


def _patch_relocation_type(kind: int) -> Any:
    def patch(data: bytearray) -> None:
        at = _jump_slot_entry(bytes(data))
        symbol = struct.unpack_from("<Q", data, at + 8)[0] >> 32
        struct.pack_into("<Q", data, at + 8, symbol << 32 | kind)
    return patch


def _patch_relocation_offset(data: bytearray) -> None:
    struct.pack_into("<Q", data, _jump_slot_entry(bytes(data)), 0x10)  # into the read-only first page


def _exported_symbol(data: bytes) -> int:
    """The index in .dynsym of the first function the library defines and exports (farm_...); the imports
    (malloc, ..., and whatever libc helpers the optimiser calls) come first."""
    tags = dict(_dynamic_entries(data)[1])
    symtab, strtab = tags[6], tags[5]
    for index in range(1, 1000):
        name_at, _, _, section = struct.unpack_from("<IBBH", data, symtab + 24 * index)
        if section != 0 and data[strtab + name_at:].startswith(b"farm_"):
            return index
    raise AssertionError("no exported farm_ function in .dynsym")


def _patch_symbol_type(data: bytearray) -> None:
    symtab = dict(_dynamic_entries(bytes(data))[1])[6]
    index = _exported_symbol(bytes(data))
    info = data[symtab + 24 * index + 4]
    data[symtab + 24 * index + 4] = (info & 0xF0) | 10


def _rename_import(data: bytearray) -> None:
    at = data.index(b"\0calloc\0") + 1
    data[at:at + 6] = b"system"


def _bind_own_symbol(symbolic: bool) -> Any:
    def patch(data: bytearray) -> None:
        if not symbolic:
            _retag(data, 30, 30, 0)
        at = _jump_slot_entry(bytes(data))
        kind = struct.unpack_from("<Q", data, at + 8)[0] & 0xFFFFFFFF
        struct.pack_into("<Q", data, at + 8, _exported_symbol(bytes(data)) << 32 | kind)  # the library's own
    return patch


def _hash_word(tag: int, word: int, value: int) -> Any:
    """Overwrite a 32-bit word of a hash table (farm's libraries: the first segment maps 1:1 from the file)."""
    def patch(data: bytearray) -> None:
        struct.pack_into("<I", data, dict(_dynamic_entries(bytes(data))[1])[tag] + 4 * word, value)
    return patch


def _nbucket(data: bytearray) -> int:
    return int(struct.unpack_from("<I", data, dict(_dynamic_entries(bytes(data))[1])[4])[0])


def _bloom_words(data: bytearray) -> int:
    return int(struct.unpack_from("<I", data, dict(_dynamic_entries(bytes(data))[1])[0x6FFFFEF5] + 8)[0])


def _patch_segment(kind: int, new_kind: int | None = None, flags: int | None = None) -> Any:
    def patch(data: bytearray) -> None:
        at = _program_header(bytes(data), kind)
        if new_kind is not None:
            struct.pack_into("<I", data, at, new_kind)
        if flags is not None:
            struct.pack_into("<I", data, at + 4, flags)
    return patch


def _tag_patch(tag: int, value: int | None = None) -> Any:
    return lambda data: _retag(data, 30, tag, value)  # DT_FLAGS becomes the hostile tag


RELOCATION_NAMES = {EM_X86_64: {5: "R_X86_64_COPY", 37: "R_X86_64_IRELATIVE", 16: "R_X86_64_DTPMOD64",
                                18: "R_X86_64_TPOFF64", 36: "R_X86_64_TLSDESC", 0: "R_X86_64_NONE",
                                2: "type 2"},
                    EM_AARCH64: {1024: "R_AARCH64_COPY", 1032: "R_AARCH64_IRELATIVE", 1028: "R_AARCH64_TLS_DTPMOD64",
                                 1031: "R_AARCH64_TLSDESC", 0: "R_AARCH64_NONE", 258: "type 258"}}
PATCHES: dict[str, tuple[Any, str]] = {
    **{f"tag-{name}": (_tag_patch(tag, 0x10), reason) for name, tag, reason in [
        ("init", 12, r"runs code on load \(DT_INIT\)"), ("fini", 13, r"runs code on unload \(DT_FINI\)"),
        ("init_array", 25, r"\(DT_INIT_ARRAY\)"), ("init_arraysz", 27, r"\(DT_INIT_ARRAYSZ\)"),
        ("fini_array", 26, r"\(DT_FINI_ARRAY\)"), ("preinit_array", 32, r"\(DT_PREINIT_ARRAY\)"),
        ("textrel", 22, r"\(DT_TEXTREL\)"), ("symbolic", 16, "DT_SYMBOLIC, which farm's libraries never carry"),
        ("debug", 21, "DT_DEBUG"), ("bind_now", 24, "DT_BIND_NOW"), ("flags_1", 0x6FFFFFFB, "DT_FLAGS_1"),
        ("rel", 17, "DT_REL,"), ("relr", 36, "DT_RELR,"), ("verneed", 0x6FFFFFFE, "DT_VERNEED"),
        ("unknown", 0x1234567, "0x1234567, which"), ("gnu_unknown", 0x6FFFFDFF, "0x6ffffdff")]},
    **{f"tag-{name}": (_tag_patch(tag, 1), reason) for name, tag, reason in [
        ("needed", 1, r"\(DT_NEEDED\)"), ("rpath", 15, r"\(DT_RPATH\)"), ("runpath", 29, r"\(DT_RUNPATH\)"),
        ("audit", 0x6FFFFEFC, r"audit library .*\(DT_AUDIT\)"), ("depaudit", 0x6FFFFEFB, r"\(DT_DEPAUDIT\)"),
        ("auxiliary", 0x7FFFFFFD, r"\(DT_AUXILIARY\)"), ("filter", 0x7FFFFFFF, r"\(DT_FILTER\)")]},
    "flags-textrel": (lambda d: _retag(d, 30, 30, 0x2 | 0x4), "DF_TEXTREL"),
    "flags-static_tls": (lambda d: _retag(d, 30, 30, 0x2 | 0x10), "only DF_SYMBOLIC and DF_BIND_NOW"),
    "duplicate-hash": (lambda d: _retag(d, 30, 4, dict(_dynamic_entries(bytes(d))[1])[4]), "repeats DT_HASH"),
    "ifunc-symbol": (_patch_symbol_type, "has ifunc symbols farm_"),
    "import-system": (_rename_import, "imports system; only"),
    "bind-own": (_bind_own_symbol(symbolic=True), "binds its own farm_[a-z_0-9]+ by name"),
    "bind-own-unsymbolic": (_bind_own_symbol(symbolic=False), "binds its own farm_[a-z_0-9]+ by name"),
    "relocation-outside": (_patch_relocation_offset, "writes outside its own writable memory, at 0x10"),
    "stack-executable": (_patch_segment(0x6474E551, flags=7), "executable stack"),
    "stack-missing": (_patch_segment(0x6474E551, new_kind=0), "executable stack"),
    "interp": (_patch_segment(0x6474E551, new_kind=3), "PT_INTERP"),
    "tls-segment": (_patch_segment(0x6474E551, new_kind=7), "PT_TLS"),
    "unknown-segment": (_patch_segment(0x6474E552, new_kind=0x60000001), "program header of type 0x60000001"),
}
MACHINES = {"x86-64": EM_X86_64, "aarch64": EM_AARCH64}
PATCH_VARIANTS = [(machine, name) for machine in MACHINES for name in PATCHES] + [
    (machine, f"relocation-{kind}") for machine, em in MACHINES.items() for kind in RELOCATION_NAMES[em]]


def _patched(farm_libraries: dict[str, Path], machine: str, name: str, into: Path) -> tuple[Path, str]:
    data = bytearray(farm_libraries[f"arith-staged-{machine}"].read_bytes())
    if name.startswith("relocation-") and name != "relocation-outside":
        kind = int(name.split("-")[1])
        _patch_relocation_type(kind)(data)
        reason = f"has {RELOCATION_NAMES[MACHINES[machine]][kind]}"
    else:
        patch, reason = PATCHES[name]
        patch(data)
    path = into / "lib.so"
    path.write_bytes(bytes(data))
    return path, reason


@pytest.mark.parametrize(("machine", "name"), PATCH_VARIANTS)
def test_patched_farm_library_is_refused_before_dlopen(farm_libraries: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, machine: str,
                                                       name: str) -> None:
    path, reason = _patched(farm_libraries, machine, name, tmp_path)
    with pytest.raises(UnsafeLibrary, match=reason):
        check_library(path)
    dlopened: list[str] = []  # were the check to pass, dlopen is recorded, never done
    monkeypatch.setattr(farm.runtime.loader.ctypes, "CDLL", lambda p: dlopened.append(p) or ctypes.CDLL(None))
    with pytest.raises(UnsafeLibrary):
        open_library(path, None)
    assert not dlopened
    count_hostile("hostile ELF", "patched libraries refused")


# ---- malformed files: PolicyViolation, never an IndexError or struct.error ----

def _overlapping_segments(data: bytearray) -> None:
    phoff, = struct.unpack_from("<Q", data, 0x20)
    loads = [phoff + 56 * i for i in range(struct.unpack_from("<H", data, 0x38)[0])
             if struct.unpack_from("<I", data, phoff + 56 * i)[0] == 1]
    second_vaddr, = struct.unpack_from("<Q", data, loads[1] + 16)
    struct.pack_into("<Q", data, loads[1] + 16, second_vaddr - 0x1000)  # now on the first segment's last page


def _set_dynamic(tag: int, value: int) -> Any:
    return lambda data: _retag(data, tag, tag, value)


MALFORMED: dict[str, tuple[Any, str]] = {
    "empty": (lambda d: d.clear(), "too short"),
    "not-elf": (lambda d: d.__setitem__(slice(0, 4), b"MZ\0\0"), "not a little-endian ELF64"),
    "elf32": (lambda d: d.__setitem__(4, 1), "not a little-endian ELF64"),
    "big-endian": (lambda d: d.__setitem__(5, 2), "not a little-endian ELF64"),
    "executable": (lambda d: struct.pack_into("<H", d, 0x10, 2), "type 2"),
    "i386": (lambda d: struct.pack_into("<H", d, 0x12, 3), "machine 3"),
    "phentsize": (lambda d: struct.pack_into("<H", d, 0x36, 32), "program header table"),
    "phoff-beyond": (lambda d: struct.pack_into("<Q", d, 0x20, 1 << 40), "program header table"),
    "overlapping-loads": (_overlapping_segments, "share a"),
    "dynamic-unmapped": (lambda d: struct.pack_into("<Q", d, _program_header(bytes(d), 2) + 16, 1 << 40),
                         "the dynamic table at 0x10000000000"),
    "two-dynamic": (_patch_segment(0x6474E552, new_kind=2), "2 PT_DYNAMIC"),
    "symtab-unmapped": (_set_dynamic(6, 1 << 33), "the dynamic symbol table"),
    "strtab-unmapped": (_set_dynamic(5, 1 << 33), "name"),
    "hash-unmapped": (_set_dynamic(4, 1 << 33), "DT_HASH"),
    "jmprel-unmapped": (_set_dynamic(23, 1 << 33), "DT_JMPREL"),
    "pltrelsz-ragged": (_set_dynamic(2, 95), "not a whole number"),
    "syment": (_set_dynamic(11, 16), "DT_SYMENT"),
    "hash-bucket-beyond": (_hash_word(4, 2, 100_000), "DT_HASH leads to symbol 100000"),
    "hash-chain-beyond": (lambda d: _hash_word(4, 2 + _nbucket(d), 70_000)(d), "DT_HASH leads to symbol 70000"),
    "hash-no-buckets": (_hash_word(4, 0, 0), "DT_HASH has no buckets"),
    "gnu-no-buckets": (_hash_word(0x6FFFFEF5, 0, 0), "DT_GNU_HASH has no buckets"),
    "gnu-bucket-below": (lambda d: _hash_word(0x6FFFFEF5, 4 + 2 * _bloom_words(d), 1)(d), "below the first hashed"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_library_is_refused_as_such(farm_libraries: dict[str, Path], tmp_path: Path, name: str) -> None:
    data = bytearray(farm_libraries["arith-staged-x86-64"].read_bytes())
    patch, detail = MALFORMED[name]
    patch(data)
    (tmp_path / "lib.so").write_bytes(bytes(data))
    with pytest.raises(MalformedLibrary, match=detail) as info:
        check_library(tmp_path / "lib.so")
    assert str(info.value).startswith("lib.so is refused as malformed: ")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_or_corrupted_library_gives_a_policy_answer(farm_libraries: dict[str, Path], tmp_path: Path,
                                                              data: st.DataObject) -> None:
    """Cut anywhere, or bytes overwritten in the headers and tables the check reads: it passes or raises
    PolicyViolation, nothing else."""
    original = farm_libraries[data.draw(st.sampled_from(["arith-staged-x86-64", "arith-staged-aarch64"]))]
    content = bytearray(original.read_bytes())
    if data.draw(st.booleans()):
        del content[data.draw(st.integers(0, len(content) - 1)):]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, min(len(content), 0x1000) - 1))  # headers, symbols, hashes, strings
            content[at] = data.draw(st.integers(0, 255))
    path = tmp_path / "lib.so"
    path.write_bytes(bytes(content))
    with contextlib.suppress(PolicyViolation):
        check_library(path)


# ---- relocations that rewrite what the loader reads next ----
# The loader reads the relocation, symbol, string and hash tables and the dynamic table from the library's
# memory while it relocates it, one relocation after another: a relocation that writes into one of them changes
# the relocations after it. Each library below is written byte by byte (no linker would emit it); each passes a
# check that judges the tables as they are in the file, and its resolver (raw syscalls creating ./canary) runs
# inside dlopen.

_RESOLVER = bytes.fromhex(
    "488d3d00000000"  # lea rdi, [rip + path]
    "be41000000"  # mov esi, O_WRONLY|O_CREAT
    "baa4010000"  # mov edx, 0644
    "b802000000" "0f05"  # open
    "4889c7" "b803000000" "0f05"  # close
    "488d0500000000"  # lea rax, [rip + the ret below]
    "c3")
_CODE, _PATH, _DYN, _RELA, _SLOT, _GOT, _TABLE, _JMPREL = 0x400, 0x480, 0x1000, 0x1200, 0x1300, 0x1340, 0x1400, 0x1500


def _symbol(name: int, info: int, shndx: int, value: int) -> bytes:
    return struct.pack("<IBBHQQ", name, info, 0, shndx, value, 0)


def _rewriting_library(variant: str) -> bytes:
    """A two-segment x86-64 library (R+X at 0, RW at 0x1000) whose first relocation rewrites a table:
    rela-retype: the RELA table is writable; an R_X86_64_64 against a local absolute symbol writes
        R_X86_64_IRELATIVE into the next relocation's r_info;
    dynamic-symtab: a RELATIVE relocation points DT_SYMTAB's value at another symbol table, in which the symbol
        a separate JMPREL table binds (malloc, to the check) is a local ifunc;
    symtab-inplace: the symbol table is writable; an R_X86_64_64 rewrites a local symbol's type to ifunc before
        the next relocation binds it."""
    data = bytearray(0x2000)
    code = bytearray(_RESOLVER)
    struct.pack_into("<i", code, 3, _PATH - (_CODE + 7))
    struct.pack_into("<i", code, len(code) - 5, len(code) - 1 - len(code))
    data[_CODE:_CODE + len(code)] = code
    data[_PATH:_PATH + 7] = b"canary\0"
    symtab_at, strtab, hash_at = 0x200, b"\0malloc\0", 0x300
    relas: list[tuple[int, int, int]] = []
    jmprels: list[tuple[int, int, int]] = []
    rela_at = 0x340  # read-only, unless the variant rewrites it
    if variant == "rela-retype":
        rela_at = _RELA
        symbols = _symbol(0, 0, 0, 0) + _symbol(0, 0, 0xFFF1, 37)  # local, absolute: its value is 37 exactly
        relas = [(_RELA + 24 + 8, 1 << 32 | 1, 0), (_SLOT, 8, _CODE)]  # R_X86_64_64 sym 1; then RELATIVE
    elif variant == "dynamic-symtab":
        symbols = _symbol(0, 0, 0, 0) + _symbol(1, 0x12, 0, 0)  # malloc, an allowed import
        relas = [(_DYN + 16 * 2 + 8, 8, _TABLE)]  # DT_SYMTAB is the third entry
        jmprels = [(_SLOT, 1 << 32 | 7, 0)]
        swapped = _symbol(0, 0, 0, 0) + _symbol(0, 0x0A, 1, _CODE)
        data[_TABLE:_TABLE + len(swapped)] = swapped
    elif variant == "symtab-inplace":
        symtab_at = _TABLE
        symbols = _symbol(0, 0, 0, 0) + _symbol(0, 0, 0xFFF1, 10 << 32 | 1 << 48) + _symbol(0, 0, 1, _CODE)
        relas = [(_TABLE + 48, 1 << 32 | 1, 0), (_SLOT, 2 << 32 | 1, 0)]
    else:
        raise AssertionError(variant)
    count = len(symbols) // 24
    data[symtab_at:symtab_at + len(symbols)] = symbols
    data[0x2E0:0x2E0 + len(strtab)] = strtab
    struct.pack_into(f"<II{1 + count}I", data, hash_at, 1, count, *[0] * (1 + count))
    dynamic = [(4, hash_at), (5, 0x2E0), (6, symtab_at), (10, len(strtab)), (11, 24),
               (7, rela_at), (8, 24 * len(relas)), (9, 24)]
    if jmprels:
        dynamic += [(3, _GOT), (2, 24 * len(jmprels)), (20, 7), (23, _JMPREL)]
    dynamic += [(30, 2), (0, 0)]
    for index, entry in enumerate(dynamic):
        struct.pack_into("<qQ", data, _DYN + 16 * index, *entry)
    for at, table in ((rela_at, relas), (_JMPREL, jmprels)):
        for index, relocation in enumerate(table):
            struct.pack_into("<QQq", data, at + 24 * index, *relocation)
    headers = [(1, 5, 0, 0, 0, 0x1000, 0x1000, 0x1000), (1, 6, 0x1000, 0x1000, 0x1000, 0x1000, 0x1000, 0x1000),
               (2, 6, _DYN, _DYN, _DYN, 16 * len(dynamic), 16 * len(dynamic), 8), (0x6474E551, 6, 0, 0, 0, 0, 0, 16)]
    struct.pack_into("<4sBBBBB7xHHIQQQIHHHHHH", data, 0, b"\x7fELF", 2, 1, 1, 0, 0, 3, EM_X86_64, 1, 0, 64, 0, 0,
                     64, 56, len(headers), 64, 0, 0)
    for index, header in enumerate(headers):
        struct.pack_into("<IIQQQQQQ", data, 64 + 56 * index, *header)
    return bytes(data)


REWRITING = ["rela-retype", "dynamic-symtab", "symtab-inplace"]
PLAIN_DLOPEN = "import ctypes, os, sys\nos.chdir(os.path.dirname(sys.argv[1]))\nctypes.CDLL(sys.argv[1])\n"


@pytest.mark.parametrize("variant", REWRITING)
def test_relocation_rewriting_a_loader_table_is_refused(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "lib.so"
    path.write_bytes(_rewriting_library(variant))
    with pytest.raises(UnsafeLibrary, match=r"relocates into .*which the loader reads while relocating"):
        check_library(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", LOADER_SCRIPT, str(path)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert "refused: lib.so is refused: " in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert not (tmp_path / "canary").exists(), f"the {variant} payload ran"
    count_hostile("hostile ELF", "relocation-rewriting libraries refused, canary absent")
    if platform.machine() == "x86_64" and sys.platform == "linux":  # the payload is real: a plain dlopen runs it
        subprocess.run([sys.executable, "-c", PLAIN_DLOPEN, str(path)], timeout=60, check=False)
        assert (tmp_path / "canary").exists(), f"the {variant} library did not run its resolver in dlopen"


# ---- the check's own cost: bounded by the size of the library, whatever its shape ----

def _many_segments_library(segments: int, relocations: int) -> bytes:
    """A library the check accepts, with `segments` writable PT_LOAD segments that have no file bytes (56 bytes
    of program header each) and `relocations` RELATIVE relocations into the last one."""
    phnum = segments + 4
    end_of_headers = 64 + 56 * phnum
    rela_at = (end_of_headers + 0xFFF) & ~0xFFF
    dynamic_at = (rela_at + 24 * relocations + 0xFFF) & ~0xFFF
    data = bytearray(dynamic_at + 0x1000)
    symtab, strtab, hash_at = end_of_headers, end_of_headers + 24, end_of_headers + 32
    struct.pack_into("<III", data, hash_at, 1, 1, 0)
    first_empty = dynamic_at + 0x1000
    for index in range(relocations):
        struct.pack_into("<QQq", data, rela_at + 24 * index, first_empty + 0x1000 * (segments - 1), 8, 0)
    dynamic = [(4, hash_at), (5, strtab), (6, symtab), (10, 1), (11, 24), (7, rela_at), (8, 24 * relocations),
               (9, 24), (30, 2), (0, 0)]
    for index, entry in enumerate(dynamic):
        struct.pack_into("<qQ", data, dynamic_at + 16 * index, *entry)
    headers = [(1, 4, 0, 0, 0, dynamic_at, dynamic_at, 0x1000),
               (1, 6, dynamic_at, dynamic_at, dynamic_at, 0x1000, 0x1000, 0x1000),
               *[(1, 6, 0, first_empty + 0x1000 * k, 0, 0, 0x1000, 0x1000) for k in range(segments)],
               (2, 6, dynamic_at, dynamic_at, dynamic_at, 16 * len(dynamic), 16 * len(dynamic), 8),
               (0x6474E551, 6, 0, 0, 0, 0, 0, 16)]
    struct.pack_into("<4sBBBBB7xHHIQQQIHHHHHH", data, 0, b"\x7fELF", 2, 1, 1, 0, 0, 3, EM_X86_64, 1, 0, 64, 0, 0,
                     64, 56, phnum, 64, 0, 0)
    for index, header in enumerate(headers):
        struct.pack_into("<IIQQQQQQ", data, 64 + 56 * index, *header)
    return bytes(data)


def test_many_segments_times_many_relocations_cost_no_more_than_their_sum() -> None:
    """Each relocation's target was looked for by a scan of every writable segment: 20,000 segments (1.1 MB of
    program headers) and 20,000 relocations took ~16 s, and a 8 MB library ~9 minutes, before every dlopen."""
    import time

    data = _many_segments_library(20_000, 20_000)
    start = time.perf_counter()
    check_library(data)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("relocations", [(1 << 20) + 1, 3 << 20])
def test_more_relocations_than_the_check_reads_are_refused_before_they_are_read(relocations: int) -> None:
    """Each relocation costs the check a Python object: a library of a gigabyte of them (which passed) would take
    ~7 GB and a minute before dlopen. Past farm.compiler.elf_policy.MAX_ENTRIES it is refused from the table's size."""
    import resource
    import time

    from farm.compiler.elf_policy import MAX_ENTRIES

    data = _many_segments_library(1, relocations)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(UnsafeLibrary, match=f"has {relocations:,} relocations; this check reads at most "
                                            f"{MAX_ENTRIES:,}"):
        check_library(data)
    assert time.perf_counter() - start < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: nothing per relocation
    check_library(_many_segments_library(1, 1000))  # the same shape, smaller, passes
