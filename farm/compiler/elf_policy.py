"""What the dynamic loader will do with a shared library, read the way the loader reads it, and refused when that
is more than farm's own libraries do: load another library, run code, resolve a symbol outside the allow-list.

The loader obeys the program headers and the dynamic segment, never the section headers (a file may rename,
lie about or drop those), so neither does this check. Everything the dynamic segment points at is read by
virtual address through the PT_LOAD segment that maps it, as the loader reads it from memory; an address no
segment maps is refused, never guessed. Runs before every dlopen: it reads only the headers, the dynamic
table, the symbol and hash tables and the relocations (a few pages), through struct.unpack_from on an mmap.
"""

from __future__ import annotations

import bisect
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from farm.compiler.codegen.abi import ALLOWED_IMPORTS
from farm.errors import MalformedLibrary, UnsafeLibrary

EM_X86_64, EM_AARCH64 = 62, 183
_ELF_HEADER = struct.Struct("<4sBBBBB7xHHIQQQIHHHHHH")
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
_DYNAMIC_ENTRY = struct.Struct("<qQ")
_SYMBOL = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_ET_DYN = 3
# The largest page the loader may map a segment with, per machine: segments sharing such a page would overlay.
_PAGE = {EM_X86_64: 0x1000, EM_AARCH64: 0x10000}

PT_NULL, PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_PHDR, PT_TLS = 0, 1, 2, 3, 4, 6, 7
PT_GNU_EH_FRAME, PT_GNU_STACK, PT_GNU_RELRO, PT_GNU_PROPERTY = 0x6474E550, 0x6474E551, 0x6474E552, 0x6474E553
PF_X, PF_W = 1, 2
# Program headers the loader acts on harmlessly; anything else (PT_INTERP, PT_TLS, unknown types) is refused.
_HARMLESS_SEGMENTS = frozenset({PT_NULL, PT_LOAD, PT_DYNAMIC, PT_NOTE, PT_PHDR, PT_GNU_EH_FRAME, PT_GNU_STACK,
                                PT_GNU_RELRO, PT_GNU_PROPERTY})
_SEGMENT_NAMES = {PT_INTERP: "PT_INTERP (a program interpreter)", PT_TLS: "PT_TLS (thread-local storage)"}

DT_NULL, DT_NEEDED, DT_PLTRELSZ, DT_PLTGOT, DT_HASH, DT_STRTAB, DT_SYMTAB = 0, 1, 2, 3, 4, 5, 6
DT_RELA, DT_RELASZ, DT_RELAENT, DT_STRSZ, DT_SYMENT, DT_PLTREL, DT_JMPREL, DT_FLAGS = 7, 8, 9, 10, 11, 20, 23, 30
DT_GNU_HASH, DT_RELACOUNT = 0x6FFFFEF5, 0x6FFFFFF9
TAG_NAMES = {
    0: "DT_NULL", 1: "DT_NEEDED", 2: "DT_PLTRELSZ", 3: "DT_PLTGOT", 4: "DT_HASH", 5: "DT_STRTAB", 6: "DT_SYMTAB",
    7: "DT_RELA", 8: "DT_RELASZ", 9: "DT_RELAENT", 10: "DT_STRSZ", 11: "DT_SYMENT", 12: "DT_INIT", 13: "DT_FINI",
    14: "DT_SONAME", 15: "DT_RPATH", 16: "DT_SYMBOLIC", 17: "DT_REL", 18: "DT_RELSZ", 19: "DT_RELENT",
    20: "DT_PLTREL", 21: "DT_DEBUG", 22: "DT_TEXTREL", 23: "DT_JMPREL", 24: "DT_BIND_NOW", 25: "DT_INIT_ARRAY",
    26: "DT_FINI_ARRAY", 27: "DT_INIT_ARRAYSZ", 28: "DT_FINI_ARRAYSZ", 29: "DT_RUNPATH", 30: "DT_FLAGS",
    32: "DT_PREINIT_ARRAY", 33: "DT_PREINIT_ARRAYSZ", 35: "DT_RELRSZ", 36: "DT_RELR", 37: "DT_RELRENT",
    0x6FFFFEF5: "DT_GNU_HASH", 0x6FFFFEFA: "DT_CONFIG", 0x6FFFFEFB: "DT_DEPAUDIT", 0x6FFFFEFC: "DT_AUDIT",
    0x6FFFFFF0: "DT_VERSYM", 0x6FFFFFF9: "DT_RELACOUNT", 0x6FFFFFFA: "DT_RELCOUNT", 0x6FFFFFFB: "DT_FLAGS_1",
    0x6FFFFFFC: "DT_VERDEF", 0x6FFFFFFD: "DT_VERDEFNUM", 0x6FFFFFFE: "DT_VERNEED", 0x6FFFFFFF: "DT_VERNEEDNUM",
    0x7FFFFFFD: "DT_AUXILIARY", 0x7FFFFFFF: "DT_FILTER",
}
# The tags farm's libraries carry (ld.lld -shared -Bsymbolic, x86-64 and aarch64, staged and in-process), plus
# DT_RELA/RELASZ/RELAENT/RELACOUNT, which IR handed to compile_llvm_ir needs for a table of pointers.
ALLOWED_TAGS = frozenset({DT_NULL, DT_PLTRELSZ, DT_PLTGOT, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ,
                          DT_RELAENT, DT_STRSZ, DT_SYMENT, DT_PLTREL, DT_JMPREL, DT_FLAGS, DT_GNU_HASH, DT_RELACOUNT})
ALLOWED_NEEDED: frozenset[str] = frozenset()  # farm's libraries take malloc & co. from the process itself
_TAG = {name: tag for tag, name in TAG_NAMES.items()}
# Tags whose value names a file or path in the string table; each makes the loader open another file.
_PATH_TAGS = {_TAG[name]: reason for name, reason in {
    "DT_NEEDED": "loads {}, whose constructors would run", "DT_AUXILIARY": "loads the auxiliary filter {}",
    "DT_FILTER": "loads the filtee {}", "DT_AUDIT": "loads the audit library {}",
    "DT_DEPAUDIT": "loads the audit library {}", "DT_RPATH": "searches libraries in {}",
    "DT_RUNPATH": "searches libraries in {}"}.items()}
_REFUSED_TAGS = {_TAG[name]: reason for names, reason in [
    (("DT_INIT", "DT_INIT_ARRAY", "DT_INIT_ARRAYSZ", "DT_PREINIT_ARRAY", "DT_PREINIT_ARRAYSZ"), "runs code on load"),
    (("DT_FINI", "DT_FINI_ARRAY", "DT_FINI_ARRAYSZ"), "runs code on unload"),
    (("DT_TEXTREL",), "has text relocations (its code is made writable while loading)")] for name in names}
DF_SYMBOLIC, DF_TEXTREL, DF_BIND_NOW = 0x2, 0x4, 0x8
_ALLOWED_FLAGS = DF_SYMBOLIC | DF_BIND_NOW

STT_GNU_IFUNC, STB_LOCAL, STV_DEFAULT, SHN_UNDEF = 10, 0, 0, 0
_SYMBOL_TYPE = bytes(info & 0xF for info in range(256))  # st_info -> STT_* (a bytes.translate table)
# Dynamic relocation types per machine: only those that write an address (of this library or of an allowed
# import) into the library's own writable memory; never COPY, IRELATIVE (runs a resolver) or TLS.
ALLOWED_RELOCATIONS = {
    EM_X86_64: {1: "R_X86_64_64", 6: "R_X86_64_GLOB_DAT", 7: "R_X86_64_JUMP_SLOT", 8: "R_X86_64_RELATIVE"},
    EM_AARCH64: {257: "R_AARCH64_ABS64", 1025: "R_AARCH64_GLOB_DAT", 1026: "R_AARCH64_JUMP_SLOT",
                 1027: "R_AARCH64_RELATIVE"},
}
_REFUSED_RELOCATION_NAMES = {
    EM_X86_64: {0: "R_X86_64_NONE", 5: "R_X86_64_COPY", 16: "R_X86_64_DTPMOD64", 17: "R_X86_64_DTPOFF64",
                18: "R_X86_64_TPOFF64", 36: "R_X86_64_TLSDESC", 37: "R_X86_64_IRELATIVE"},
    EM_AARCH64: {0: "R_AARCH64_NONE", 1024: "R_AARCH64_COPY", 1028: "R_AARCH64_TLS_DTPMOD64",
                 1029: "R_AARCH64_TLS_DTPREL64", 1030: "R_AARCH64_TLS_TPREL64", 1031: "R_AARCH64_TLSDESC",
                 1032: "R_AARCH64_IRELATIVE"},
}
_LISTED = 8  # names listed per reason before "..."
# Entries of one kind (hashed symbols, hash buckets, relocations) this check reads. farm's libraries have a few
# dozen; a batch of many JIT functions thousands. Each costs the check a Python object (~180 bytes, ~1.4 us for a
# relocation): a library of a gigabyte of relocations would take ~7 GB and a minute before dlopen.
MAX_ENTRIES = 1 << 20
_LOW_BIT = bytes(b & 1 for b in range(256))  # a bytes.translate table: byte -> its bit 0
_ABOVE_ANY_ADDRESS = 1 << 65  # sorts after every (address, end) pair that starts at a given address


class Segment(NamedTuple):
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


class Relocation(NamedTuple):
    offset: int  # the virtual address the loader writes to
    type: int
    symbol: int  # index in the dynamic symbol table; 0 for none


class SymbolRef(NamedTuple):
    """A symbol a relocation binds."""

    name: str
    kind: int  # STT_*
    by_name: bool  # global or weak with default visibility: the loader looks the name up in the process
    defined: bool  # has a section index (whether the lookup finds this definition is another matter)


@dataclass
class LoaderView:
    """What the dynamic loader acts on, as it would read it; what check_library judges."""

    library: str
    machine: int
    segments: list[Segment]
    dynamic: list[tuple[int, int]]  # (tag, value) in order, up to and without DT_NULL
    strings: list[tuple[int, str]] = field(default_factory=list)  # (tag, text) of DT_NEEDED, DT_RPATH, ...
    symbol_count: int = 0
    undefined: dict[int, str] = field(default_factory=dict)  # symbol index -> name (named ones only)
    ifuncs: dict[int, str] = field(default_factory=dict)
    relocations: list[Relocation] = field(default_factory=list)
    relocated: dict[int, SymbolRef] = field(default_factory=dict)  # the symbols the relocations bind
    # (what, vaddr, size) of everything the loader reads from the library's memory while it relocates it: the
    # dynamic table, the symbol, string and hash tables, the relocation tables themselves
    tables: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def tags(self) -> list[int]:
        return [tag for tag, _ in self.dynamic]

    @property
    def flags(self) -> int:
        return dict(self.dynamic).get(DT_FLAGS, 0)


def check_library(library: Path | bytes, name: str = "library") -> None:
    """Refuse a shared library (a file, or its bytes as they will be loaded) that the loader would make do more
    than farm's own libraries do: UnsafeLibrary lists every reason, MalformedLibrary says what could not be read."""
    view = read_library(library, name)
    reasons = [*_segment_reasons(view), *_tag_reasons(view), *_symbol_reasons(view), *_relocation_reasons(view)]
    if reasons:
        raise UnsafeLibrary(view.library, reasons)


def read_library(library: Path | bytes, name: str = "library") -> LoaderView:
    """The loader's view of a library; MalformedLibrary if it is not one the loader could map and read."""
    if isinstance(library, bytes):
        return _read(name, library)
    with open(library, "rb") as fh:
        if fh.seek(0, 2) < _ELF_HEADER.size:  # too short to map; _read says how short
            return _read(library.name, b"\0" * fh.tell())
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read(library.name, data)


def _read(name: str, data: bytes | mmap.mmap) -> LoaderView:
    if len(data) < _ELF_HEADER.size:
        raise MalformedLibrary(name, f"{len(data)} bytes is too short for an ELF header")
    try:
        return _Reader(name, data).read()
    except struct.error as exc:  # every read is bounds-checked first: this is a safety net only
        raise MalformedLibrary(name, f"truncated ({exc})") from None


class _Reader:
    """Reads one mapped file the way the loader does; raises MalformedLibrary where the loader could not."""

    def __init__(self, library: str, data: bytes | mmap.mmap) -> None:
        self.library, self.data = library, data
        self.loads: list[Segment] = []
        self.load_starts: list[int] = []  # the loads' addresses, ascending (checked): _locate bisects them
        self.symbols = b""  # the hashed part of the dynamic symbol table
        self.tables: list[tuple[str, int, int]] = []  # LoaderView.tables
        self.string_end = 0  # the furthest string-table byte read, relative to DT_STRTAB

    def malformed(self, detail: str) -> MalformedLibrary:
        return MalformedLibrary(self.library, detail)

    def read(self) -> LoaderView:
        machine, segments = self._headers()
        self.loads = self._loads(machine, segments)
        self.load_starts = [seg.vaddr for seg in self.loads]
        dynamics = [s for s in segments if s.type == PT_DYNAMIC]
        if len(dynamics) != 1:
            raise self.malformed(f"has {len(dynamics)} PT_DYNAMIC segments; a shared library has exactly one")
        view = LoaderView(self.library, machine, segments, self._dynamic(dynamics[0].vaddr))
        self.tables.append(("the dynamic table", dynamics[0].vaddr,
                            max(dynamics[0].memsz, _DYNAMIC_ENTRY.size * (len(view.dynamic) + 1))))
        tags = dict(view.dynamic)
        view.strings = [(tag, self._string(tags, value, TAG_NAMES[tag]))
                        for tag, value in view.dynamic if tag in _PATH_TAGS]
        self._symbols(view, tags)
        self._relocations(view, tags)
        symbols = max(view.symbol_count, max(view.relocated, default=-1) + 1)
        self.tables.append(("the dynamic symbol table", tags[DT_SYMTAB], symbols * _SYMBOL.size))
        if DT_STRTAB in tags:
            self.tables.append(("the string table", tags[DT_STRTAB], max(tags.get(DT_STRSZ, 0), self.string_end)))
        view.tables = self.tables
        return view

    def _headers(self) -> tuple[int, list[Segment]]:
        magic, klass, encoding, version, _, _, kind, machine, _, _, phoff, _, _, _, phentsize, phnum, _, _, _ = \
            _ELF_HEADER.unpack_from(self.data, 0)
        if magic != b"\x7fELF" or klass != 2 or encoding != 1 or version != 1:
            raise self.malformed("is not a little-endian ELF64 file")
        if kind != _ET_DYN or machine not in _PAGE:
            raise self.malformed(f"is an ELF file of type {kind} for machine {machine}; farm loads only shared "
                                 f"libraries (type {_ET_DYN}) for x86-64 ({EM_X86_64}) or aarch64 ({EM_AARCH64})")
        if phentsize != _PROGRAM_HEADER.size or phnum in (0, 0xFFFF) or phoff + phnum * phentsize > len(self.data):
            raise self.malformed(f"its program header table ({phnum} entries of {phentsize} bytes at {phoff}) "
                                 "is empty, malformed or beyond the end of the file")
        segments = [Segment(t, f, off, vaddr, filesz, memsz) for t, f, off, vaddr, _, filesz, memsz, _
                    in _PROGRAM_HEADER.iter_unpack(self.data[phoff:phoff + phnum * phentsize])]
        return machine, segments

    def _loads(self, machine: int, segments: list[Segment]) -> list[Segment]:
        """The PT_LOAD segments, checked to map as the file says: in the file, in address order, and no two
        sharing a page (a later mapping would overlay an earlier one's bytes, so memory would differ from
        what is read here)."""
        loads = [s for s in segments if s.type == PT_LOAD]
        page = _PAGE[machine]
        for seg in loads:
            if seg.filesz > seg.memsz or seg.offset + seg.filesz > len(self.data):
                raise self.malformed(f"a PT_LOAD segment at 0x{seg.vaddr:x} maps bytes beyond the end of the file")
            if (seg.vaddr - seg.offset) % 0x1000:  # the loader refuses it too: memory would not show these bytes
                raise self.malformed(f"a PT_LOAD segment's address 0x{seg.vaddr:x} and offset 0x{seg.offset:x} "
                                     "differ by other than whole pages")
        for before, after in zip(loads, loads[1:]):
            if (before.vaddr + before.memsz + page - 1) // page > after.vaddr // page:
                raise self.malformed(f"PT_LOAD segments at 0x{before.vaddr:x} and 0x{after.vaddr:x} are out of "
                                     f"order or share a {page:#x}-byte page")
        if not loads:
            raise self.malformed("has no PT_LOAD segment")
        return loads

    def _bound(self, count: int, what: str) -> None:
        """Refuse, before reading them one by one, more entries than the check reads (MAX_ENTRIES)."""
        if count > MAX_ENTRIES:
            raise UnsafeLibrary(self.library, [f"has {count:,} {what}; this check reads at most {MAX_ENTRIES:,} "
                                               "(farm.compiler.elf_policy.MAX_ENTRIES): farm's libraries have a few "
                                               "dozen"])

    def _locate(self, vaddr: int, size: int, what: str) -> tuple[int, int]:
        """File offset of [vaddr, vaddr + size) and the end of its segment's file bytes. The loads are in
        address order and disjoint (_loads): only the last one starting at or below vaddr can hold it, found
        by bisection (a library may have 65,534 segments, and this runs for every name and table read)."""
        at = bisect.bisect_right(self.load_starts, vaddr) - 1
        if at >= 0:
            seg = self.loads[at]
            if vaddr + size <= seg.vaddr + seg.filesz:
                return seg.offset + vaddr - seg.vaddr, seg.offset + seg.filesz
        raise self.malformed(f"{what} at 0x{vaddr:x} ({size} bytes) is not in the file bytes of a PT_LOAD segment")

    def _bytes(self, vaddr: int, size: int, what: str) -> bytes:
        start, _ = self._locate(vaddr, size, what)
        return self.data[start:start + size]

    def _dynamic(self, vaddr: int) -> list[tuple[int, int]]:
        """The dynamic entries up to DT_NULL, read from where the loader reads them: the mapped segment."""
        start, end = self._locate(vaddr, _DYNAMIC_ENTRY.size, "the dynamic table")
        entries: list[tuple[int, int]] = []
        for tag, value in _DYNAMIC_ENTRY.iter_unpack(self.data[start:end - (end - start) % _DYNAMIC_ENTRY.size]):
            if tag == DT_NULL:
                return entries
            entries.append((tag, value))
        raise self.malformed("the dynamic table has no DT_NULL within its segment's file bytes")

    def _string(self, tags: dict[int, int], offset: int, what: str) -> str:
        if DT_STRTAB not in tags:
            raise self.malformed(f"has {what} but no DT_STRTAB")
        start, end = self._locate(tags[DT_STRTAB] + offset, 1, f"the string of {what}")
        stop = self.data.find(b"\0", start, end)
        if stop < 0:
            raise self.malformed(f"the string of {what} at 0x{tags[DT_STRTAB] + offset:x} is not terminated")
        self.string_end = max(self.string_end, offset + stop - start + 1)
        return self.data[start:stop].decode("utf-8", "backslashreplace")

    def _symbols(self, view: LoaderView, tags: dict[int, int]) -> None:
        """Every symbol the hash tables reach (the loader may bind or dlsym any of them): which are imports and
        which are ifuncs."""
        if DT_SYMTAB not in tags or tags.get(DT_SYMENT, _SYMBOL.size) != _SYMBOL.size:
            raise self.malformed("has no DT_SYMTAB, or DT_SYMENT is not 24: the loader cannot read its symbols")
        counts = [self._hash_count(tags[DT_HASH])] if DT_HASH in tags else []
        counts += [self._gnu_hash_count(tags[DT_GNU_HASH])] if DT_GNU_HASH in tags else []
        if not counts:
            raise self.malformed("has neither DT_HASH nor DT_GNU_HASH: the size of its symbol table is unknown")
        view.symbol_count = max(counts)  # both present: check the larger table, so neither hides a symbol
        self._bound(view.symbol_count, "hashed symbols")
        self.symbols = table = self._bytes(tags[DT_SYMTAB], view.symbol_count * _SYMBOL.size,
                                           "the dynamic symbol table")
        # Columns of the table as bytes, searched in C: a Python loop over every symbol costs more than the rest.
        for index in _positions(table[4::_SYMBOL.size].translate(_SYMBOL_TYPE), STT_GNU_IFUNC):
            view.ifuncs[index] = self._symbol_name(tags, table, index)
        for index in _positions(_or(table[6::_SYMBOL.size], table[7::_SYMBOL.size]), SHN_UNDEF):
            if _SYMBOL.unpack_from(table, index * _SYMBOL.size)[0]:  # named: index 0 is the null symbol
                view.undefined[index] = self._symbol_name(tags, table, index)

    def _symbol_name(self, tags: dict[int, int], table: bytes, index: int) -> str:
        return self._string(tags, _SYMBOL.unpack_from(table, index * _SYMBOL.size)[0], f"symbol #{index}'s name")

    def _hash_count(self, vaddr: int) -> int:
        """nchain, once no bucket or chain leads past it (a lookup follows them, wherever they point)."""
        nbucket, nchain = struct.unpack(b"<II", self._bytes(vaddr, 8, "DT_HASH"))
        if not nbucket:  # every lookup divides by it
            raise self.malformed("DT_HASH has no buckets")
        self._bound(max(nbucket, nchain), "DT_HASH buckets or symbols")
        links = self._bytes(vaddr + 8, 4 * (nbucket + nchain), "DT_HASH's buckets and chains")
        farthest = max(struct.unpack(f"<{nbucket + nchain}I", links), default=0)
        if farthest >= nchain:
            raise self.malformed(f"DT_HASH leads to symbol {farthest}, beyond the {nchain} it declares")
        self.tables.append(("DT_HASH", vaddr, 8 + 4 * (nbucket + nchain)))
        return int(nchain)

    def _gnu_hash_count(self, vaddr: int) -> int:
        """Symbols a GNU hash table reaches: past the highest bucket's chain, whose last entry has bit 0 set."""
        nbuckets, symoffset, bloom_words, _ = struct.unpack(b"<IIII", self._bytes(vaddr, 16, "DT_GNU_HASH"))
        if not nbuckets or not bloom_words:  # every lookup divides by both
            raise self.malformed("DT_GNU_HASH has no buckets or no bloom filter words")
        buckets_at = vaddr + 16 + 8 * bloom_words
        self._bound(nbuckets, "GNU hash buckets")
        buckets = struct.unpack(f"<{nbuckets}I", self._bytes(buckets_at, 4 * nbuckets, "the GNU hash buckets"))
        last, first = max(buckets, default=0), min(filter(None, buckets), default=symoffset)
        if first < symoffset:  # a lookup would read a chain before the chain array
            raise self.malformed(f"a GNU hash bucket points at symbol {first}, below the first hashed ({symoffset})")
        if last == 0:  # no bucket holds a symbol: only those below symoffset exist
            self.tables.append(("DT_GNU_HASH", vaddr, buckets_at + 4 * nbuckets - vaddr))
            return int(symoffset)
        chain_at = buckets_at + 4 * nbuckets + 4 * (last - symoffset)
        start, end = self._locate(chain_at, 4, "the GNU hash chains")
        # The first word with bit 0 set, searched in C: bit 0 of a little-endian word is in its first byte.
        step = self.data[start:end - (end - start) % 4:4].translate(_LOW_BIT).find(1)
        if step < 0:
            raise self.malformed("a GNU hash chain does not end within its segment")
        self.tables.append(("DT_GNU_HASH", vaddr, chain_at + 4 * (step + 1) - vaddr))
        return int(last) + step + 1

    def _relocations(self, view: LoaderView, tags: dict[int, int]) -> None:
        """DT_RELA and DT_JMPREL, the relocation tables farm's libraries use (DT_REL and DT_RELR are refused
        as tags), and the symbols they bind (by index: the loader does not look at the hash tables for these)."""
        if tags.get(DT_RELAENT, _RELA.size) != _RELA.size or tags.get(DT_PLTREL, DT_RELA) != DT_RELA:
            raise self.malformed("DT_RELAENT is not 24 or DT_PLTREL is not DT_RELA")
        self._bound(sum(tags.get(size, 0) for size in (DT_RELASZ, DT_PLTRELSZ)) // _RELA.size, "relocations")
        for at, size in ((DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)):
            if at not in tags:
                continue
            if tags.get(size, 0) % _RELA.size:
                raise self.malformed(f"{TAG_NAMES[size]} ({tags[size]}) is not a whole number of relocations")
            table = self._bytes(tags[at], tags.get(size, 0), TAG_NAMES[at])
            self.tables.append((f"the {TAG_NAMES[at]} relocation table", tags[at], len(table)))
            view.relocations += [Relocation(offset, info & 0xFFFFFFFF, info >> 32)
                                 for offset, info, _ in _RELA.iter_unpack(table)]
        for index in {r.symbol for r in view.relocations if r.symbol}:  # any index, hashed or not
            entry = self.symbols[index * _SYMBOL.size:(index + 1) * _SYMBOL.size] if index < view.symbol_count \
                else self._bytes(tags[DT_SYMTAB] + index * _SYMBOL.size, _SYMBOL.size, f"symbol #{index}")
            name, info, other, shndx, _, _ = _SYMBOL.unpack(entry)
            known = view.undefined.get(index) or view.ifuncs.get(index)
            view.relocated[index] = SymbolRef(known or self._string(tags, name, f"symbol #{index}'s name"),
                                              info & 0xF, info >> 4 != STB_LOCAL and other & 3 == STV_DEFAULT,
                                              shndx != SHN_UNDEF)


# ---- the judgement: each function lists its reasons, so a refusal names them all ----

def _segment_reasons(view: LoaderView) -> list[str]:
    reasons = [f"has a {_SEGMENT_NAMES.get(s.type, f'program header of type {s.type:#x}')}, which farm's "
               "libraries never have" for s in view.segments if s.type not in _HARMLESS_SEGMENTS]
    stacks = [s for s in view.segments if s.type == PT_GNU_STACK]
    if not stacks or any(s.flags & PF_X for s in stacks):
        reasons.append("asks for an executable stack (PT_GNU_STACK with PF_X, or none): dlopen would make the "
                       "whole process's stack executable")
    return reasons


def _tag_reasons(view: LoaderView) -> list[str]:
    reasons = [_PATH_TAGS[tag].format(repr(text)) + f" ({TAG_NAMES[tag]})" for tag, text in view.strings
               if not (tag == DT_NEEDED and text in ALLOWED_NEEDED)]
    tags = set(view.tags)
    if not tags <= ALLOWED_TAGS or len(tags) < len(view.tags):  # the common case skips the loop below
        reasons += _unusual_tag_reasons(view.tags)
    if view.flags & ~_ALLOWED_FLAGS:
        textrel = " (DF_TEXTREL: its code is made writable while loading)" if view.flags & DF_TEXTREL else ""
        reasons.append(f"has DT_FLAGS {view.flags:#x}; only DF_SYMBOLIC and DF_BIND_NOW are allowed{textrel}")
    return reasons


def _unusual_tag_reasons(tags: list[int]) -> list[str]:
    grouped: dict[str, list[str]] = {}  # reason ("{}": the tags) -> its tags, so each reason is said once
    seen: set[int] = set()
    for tag in tags:
        name = TAG_NAMES.get(tag, f"{tag:#x}")
        if tag in seen and tag != DT_NEEDED:
            grouped.setdefault("repeats {} (the loader keeps the last one; this check will not guess)", []).append(name)
        seen.add(tag)
        if tag in _REFUSED_TAGS:
            grouped.setdefault(_REFUSED_TAGS[tag] + " ({})", []).append(name)
        elif tag not in ALLOWED_TAGS and tag not in _PATH_TAGS:
            grouped.setdefault("has {}, which farm's libraries never carry", []).append(name)
    return [reason.format(", ".join(names)) for reason, names in grouped.items()]


def _symbol_reasons(view: LoaderView) -> list[str]:
    """The hashed symbols (dlsym may find any) and those relocations bind (the loader binds them by index)."""
    reasons = []
    ifuncs = {*view.ifuncs.values(), *(s.name for s in view.relocated.values() if s.kind == STT_GNU_IFUNC)}
    if ifuncs:
        reasons.append(f"has ifunc symbols {_names(ifuncs)}, whose resolvers run when bound")
    by_name = [s for s in view.relocated.values() if s.by_name and s.name not in ALLOWED_IMPORTS]
    imports = {*view.undefined.values(), *(s.name for s in by_name if not s.defined)} - ALLOWED_IMPORTS
    if imports:
        reasons.append(f"imports {_names(imports)}; only {_names(ALLOWED_IMPORTS)} may be imported")
    # A definition of its own does not make a lookup by name safe: the bloom filter, the hash chains, a zero
    # value or DF_SYMBOLIC's absence can each send the loader to another library's symbol of that name.
    own = {s.name for s in by_name if s.defined}
    if own:
        reasons.append(f"binds its own {_names(own)} by name: the loader may take them from another library; "
                       f"only {_names(ALLOWED_IMPORTS)} may be bound by name")
    return reasons


def _relocation_reasons(view: LoaderView) -> list[str]:
    allowed = ALLOWED_RELOCATIONS[view.machine]
    refused = {r.type for r in view.relocations if r.type not in allowed}
    names = _REFUSED_RELOCATION_NAMES[view.machine]
    reasons = [f"has {names.get(t, f'type {t}')} relocations; only {_names(allowed.values())} are "
               "allowed" for t in sorted(refused)]
    writable = sorted((s.vaddr, s.vaddr + s.memsz) for s in view.segments if s.type == PT_LOAD and s.flags & PF_W)
    stray = [r.offset for r in view.relocations if not _inside(writable, r.offset, 8)]
    tags = dict(view.dynamic)  # the loader writes GOT[1] and GOT[2] of a library with PLT relocations
    got = tags.get(DT_PLTGOT, 0)
    if DT_JMPREL in tags and not _inside(writable, got, 24):
        stray.append(got)
    if stray:
        reasons.append(f"writes outside its own writable memory, at {_names(f'0x{a:x}' for a in stray)}")
    reasons += _rewritten_table_reasons(view, got if DT_JMPREL in tags else None)
    return reasons


def _rewritten_table_reasons(view: LoaderView, got: int | None) -> list[str]:
    """The loader reads the dynamic table, the symbol, string and hash tables and the relocation tables from
    the library's memory while it relocates, one relocation after another: a relocation that writes into any of
    them changes what the next ones do (a relocation type or symbol this check never saw, a symbol table swapped
    for one with an ifunc), so none may. The loader's own writes (GOT[0..2]) may not land there either."""
    writes = sorted([*(r.offset for r in view.relocations), *((got, got + 8, got + 16) if got is not None else ())])
    reasons = []
    for what, start, size in view.tables:
        first = bisect.bisect_left(writes, start - 7)  # an 8-byte write from start - 7 on overlaps the table
        hits = []
        for at in writes[first:]:
            if at >= start + size:
                break
            hits.append(at)
        if hits:
            reasons.append(f"relocates into {what} (at {_names(f'0x{a:x}' for a in hits)}), which the loader "
                           "reads while relocating: the relocations after it would not be the ones checked")
    return reasons


def _inside(ranges: list[tuple[int, int]], vaddr: int, size: int) -> bool:
    """Whether [vaddr, vaddr + size) lies in one of the ranges, which are sorted and disjoint (the PT_LOAD
    segments are, _Reader._loads checks it): by bisection, not a scan per relocation, which cost segments x
    relocations (65,534 segments without file bytes cost 56 bytes each)."""
    at = bisect.bisect_right(ranges, (vaddr, _ABOVE_ANY_ADDRESS)) - 1
    return at >= 0 and vaddr + size <= ranges[at][1]


def _positions(column: bytes, value: int) -> Iterator[int]:
    at = column.find(value)
    while at >= 0:
        yield at
        at = column.find(value, at + 1)


def _or(low: bytes, high: bytes) -> bytes:
    """Bytewise low | high (two columns of one 16-bit field: zero where the field is zero), in C."""
    return (int.from_bytes(low, "little") | int.from_bytes(high, "little")).to_bytes(len(low), "little")


def _names(names: Iterable[str]) -> str:
    listed = sorted(set(names))
    return ", ".join(listed[:_LISTED]) + (f" and {len(listed) - _LISTED} more" if len(listed) > _LISTED else "")
