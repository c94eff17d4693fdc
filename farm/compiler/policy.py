"""What the farm will build and load: no code that runs on load, no imports beyond an allow-list.

Two checks, because either alone can be bypassed. The IR check decides on the module LLVM parsed, the very
module that is then compiled (never on the raw text: LLVM's lexer is not ours to guess), and refuses what it
shows (imports, intrinsics, inline and module asm, aliases, ifuncs, constructors, sections) naming the
function and instruction or global at fault. The ELF check refuses what a linked library really imports or
runs when loaded, whatever produced it (calls the backend lowered to libcalls included): farm/compiler/elf_policy.py,
which the loader runs again before every dlopen.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from typing import Any

from farm.compiler.codegen.abi import ALLOWED_IMPORTS, MADV_POPULATE_WRITE
from farm.errors import PolicyViolation, StageFailed

MAX_IR_BYTES = 256 << 20  # a module larger than this is refused before it reaches a parser or a tool
# The bytes a module's globals may take, as the backend lays them out. A zeroinitializer is a few bytes of text
# for any size: without a cap, `@big = constant [1 << 36 x i8] zeroinitializer` asks the in-process path for a
# 64 GiB object in this process's memory (and the staged one for gigabytes of disk). farm's modules hold bytes.
MAX_DATA_BYTES = 64 << 20

# LLVM intrinsics a module may declare (names without their type suffixes). farm's own modules use none;
# these are what opt forms from plain instructions (min/max, overflow checks, funnel shifts, memcpy from
# copy loops, lifetime and alias annotations), so IR a user optimised beforehand still loads. Each lowers to
# instructions or to an allowed import; those that lower to any other libcall are left to the ELF check.
# Refused, among others: read_register/write_register, frameaddress/returnaddress, thread.pointer,
# init.trampoline (writes executable code), clear_cache, eh.*, va_*, coro.*, experimental.* (patchpoint
# calls an arbitrary address), x86.*, instrprof.*, and math that lowers to libm calls (sin, exp, pow...).
ALLOWED_INTRINSICS = frozenset({
    "llvm.memcpy", "llvm.memcpy.inline", "llvm.memmove", "llvm.memset", "llvm.memset.inline",
    "llvm.lifetime.start", "llvm.lifetime.end", "llvm.invariant.start", "llvm.invariant.end", "llvm.assume",
    "llvm.expect", "llvm.expect.with.probability", "llvm.experimental.noalias.scope.decl", "llvm.sideeffect",
    "llvm.donothing", "llvm.is.constant", "llvm.objectsize", "llvm.prefetch",
    "llvm.dbg.declare", "llvm.dbg.value", "llvm.dbg.label", "llvm.dbg.assign",
    "llvm.smax", "llvm.smin", "llvm.umax", "llvm.umin", "llvm.abs", "llvm.ctpop", "llvm.ctlz", "llvm.cttz",
    "llvm.bswap", "llvm.bitreverse", "llvm.fshl", "llvm.fshr",
    "llvm.sadd.with.overflow", "llvm.uadd.with.overflow", "llvm.ssub.with.overflow", "llvm.usub.with.overflow",
    "llvm.smul.with.overflow", "llvm.umul.with.overflow",
    "llvm.sadd.sat", "llvm.uadd.sat", "llvm.ssub.sat", "llvm.usub.sat",
    "llvm.vector.reduce.add", "llvm.vector.reduce.mul", "llvm.vector.reduce.and", "llvm.vector.reduce.or",
    "llvm.vector.reduce.xor", "llvm.vector.reduce.smax", "llvm.vector.reduce.smin", "llvm.vector.reduce.umax",
    "llvm.vector.reduce.umin",
    "llvm.fabs", "llvm.copysign", "llvm.sqrt", "llvm.minnum", "llvm.maxnum", "llvm.fmuladd",
    "llvm.stacksave", "llvm.stackrestore", "llvm.threadlocal.address", "llvm.trap",
})
# ld.lld makes a defined `_init` / `_fini` the library's DT_INIT / DT_FINI: code the loader runs on dlopen.
LOAD_TIME_NAMES = frozenset({"_init", "_fini"})
# Named metadata the x86-64 ELF backend may read. Any other `llvm.*` one is refused unless empty: among them
# llvm.dependent-libraries, which ld.lld turns into DT_NEEDED (another library, and its constructors).
ALLOWED_NAMED_METADATA = frozenset({"llvm.module.flags", "llvm.ident", "llvm.dbg.cu", "llvm.commandline"})

# Considered and allowed: thread_local globals (their initialisers are data in the TLS image), comdats,
# `gc` strategies and personality functions (code, not load-time; a personality must still be defined or an
# allowed import), and attributes that make the backend insert calls ("fentry-call", "probe-stack",
# "instrument-function-entry"...): each such call is an import the ELF check refuses.
_TYPE_SUFFIX = re.compile(r"(?:i\d+|f(?:16|32|64|80|128)|bf16|p\d+|v\d+(?:i\d+|f\d+|p\d+)|nxv\d+(?:i\d+|f\d+))")


def check_size(ir_text: str, source: str) -> None:
    if len(ir_text) > MAX_IR_BYTES:
        raise PolicyViolation(f"{source}: the IR is {len(ir_text):,} bytes; the limit is {MAX_IR_BYTES:,}")


def parse_ir(ir_text: str, source: str = "module") -> Any:
    """LLVM's (llvmlite's) parse of the text, verified, after the size cap: a ModuleRef."""
    import llvmlite.binding as llvm

    check_size(ir_text, source)
    try:
        module = llvm.parse_assembly(ir_text)
        module.verify()
    except RuntimeError as exc:
        raise StageFailed("parse", 1, f"{source}: {exc}") from None
    return module


def parse_bitcode(data: bytes, source: str = "module") -> Any:
    """LLVM's reading of bitcode (here, llvm-as-16's output: LLVM 22 reads older bitcode, upgrading it)."""
    import llvmlite.binding as llvm

    try:
        return llvm.parse_bitcode(data)
    except RuntimeError as exc:
        raise StageFailed("parse", 1, f"{source}: {exc}") from None


def check_module(module: Any, source: str = "module", provided: frozenset[str] = frozenset()) -> None:
    """Refuse a parsed module (a llvmlite ModuleRef) that would import or run anything beyond the allow-list;
    PolicyViolation names the module, then the function and instruction or the global at fault.
    `provided`: functions the other modules linked into the same library define."""
    check_provided(check_module_alone(module, source), provided, source)


def check_module_alone(module: Any, source: str = "module") -> tuple[str, ...]:
    """Every check of check_module that needs no other module; returns the functions the module imports from
    the library's other modules, for check_provided once they are all parsed (in other processes, maybe).

    Functions and globals come from llvmlite's API. What it does not expose (module asm, aliases, ifuncs,
    sections, prologue data, attribute groups, named metadata), and inline asm, are read from LLVM's
    canonical printout: walking every instruction through llvmlite costs seconds on a large module, the
    printout a tenth of the parse."""
    imports = _check_functions(module, source)
    _check_globals(module, source)
    _check_printout(str(module), source)
    return imports


def check_provided(imports: tuple[str, ...], provided: frozenset[str], source: str = "module") -> None:
    """Refuse a module that imports a function (check_module_alone) that no module of the library defines."""
    for name in imports:
        if name not in provided:
            raise PolicyViolation(f"{source}: declares the external function @{name}; only {_allowed()}, the "
                                  "allowed LLVM intrinsics and the library's own functions may be imported")


def _check_functions(module: Any, source: str) -> tuple[str, ...]:
    imports: list[str] = []
    for fn in module.functions:
        name = fn.name
        if not _is_declaration(fn):
            if name in LOAD_TIME_NAMES:
                raise PolicyViolation(f"{source}: defines the function @{name}, which the linker makes the "
                                      "library's load-time initialiser/finaliser")
            continue
        if name.startswith("llvm."):
            if _intrinsic_base(name) not in ALLOWED_INTRINSICS:
                raise PolicyViolation(f"{source}: declares the intrinsic @{name}, which is not in the allow-list "
                                      "(farm.compiler.policy.ALLOWED_INTRINSICS)")
        elif name not in ALLOWED_IMPORTS:
            imports.append(name)
    return tuple(imports)


def _check_globals(module: Any, source: str) -> None:
    data, layout = 0, None
    for gv in module.global_variables:
        name = gv.name
        if name.startswith("llvm."):  # global_ctors/dtors run code on load; used/compiler.used farm never needs
            raise PolicyViolation(f"{source}: defines the special global @{name} (constructors, destructors and "
                                  "other llvm.* globals are refused)")
        if _is_declaration(gv):
            raise PolicyViolation(f"{source}: imports the external global @{name}; no global may be imported")
        if name in LOAD_TIME_NAMES:
            raise PolicyViolation(f"{source}: defines the global @{name}, which the linker makes the library's "
                                  "load-time initialiser/finaliser")
        if layout is None:
            import llvmlite.binding as llvm

            layout = llvm.create_target_data(module.data_layout)
        size = layout.get_abi_size(gv.global_value_type)  # the backend's own (64-bit, wrapping) arithmetic
        data += size
        if data > MAX_DATA_BYTES:
            raise PolicyViolation(f"{source}: the global @{name} ({size:,} bytes) takes the module's data past "
                                  f"{MAX_DATA_BYTES:,} bytes (farm.compiler.policy.MAX_DATA_BYTES)")


def _is_declaration(value: Any) -> bool:
    """A declaration, or a definition the compiler throws away and imports instead (available_externally)."""
    import llvmlite.binding as llvm

    return bool(value.is_declaration) or value.linkage == llvm.Linkage.available_externally


def _intrinsic_base(name: str) -> str:
    """`llvm.memcpy.p0.p0.i64` -> `llvm.memcpy`: the name without its overload type suffixes."""
    parts = name.split(".")
    while len(parts) > 2 and _TYPE_SUFFIX.fullmatch(parts[-1]):
        parts.pop()
    return ".".join(parts)


# ---- LLVM's canonical printout ----
# str(module) prints every string and quoted name with LLVM's own escaping (`"` -> \22, `\` -> \\, newline
# -> \0A), so in the printout a string never holds a quote or a newline, a `;` outside strings starts a
# comment, and each top-level entity and instruction is a line of its own. Reading it with the regexes below
# is therefore exact, unlike reading the text a user wrote (where `"a\"` is a whole name ending in `\`).

_STRING_IN_PRINTOUT = re.compile(r'"[^"]*"')
# Keywords that introduce code or placement outside the policy: candidates are found anywhere (a substring
# search: a regex over megabytes costs ten times more), then kept only where they are a keyword token (outside
# strings and comments, not part of a name or a label `asm:`).
_KEYWORDS = ("asm", "alias", "ifunc", "section", "partition", "prologue", "prefix")
_KEYWORD = re.compile(rf"(?<![-\w$.%@!#^])({'|'.join(_KEYWORDS)})(?![-\w$.:])")
_SECTION_ATTRIBUTE = re.compile(r'^attributes #\d+ = \{[^\n]*section', re.MULTILINE)
_NAMED_METADATA = re.compile(r"^!([-a-zA-Z$._\\][-a-zA-Z$._0-9\\]*) = (.*)$", re.MULTILINE)
_SECTION_FLAG = "Objective-C Image Info Section"  # a module flag whose string is a section name
_FUNCTION_NAME = re.compile(r'"[^"]*"|@("[^"]*"|[-a-zA-Z$._0-9]+)')  # strings skipped, then the first @name
_KEYWORD_REASONS = {
    "asm": "inline assembly",
    "alias": "an alias (farm never emits aliases; one can name an ifunc, whose resolver runs on load)",
    "ifunc": "an ifunc, whose resolver runs on load",
    "section": "an explicit section (a section such as .init_array runs code on load)",
    "partition": "an explicit partition",
    "prologue": "prologue data (raw bytes executed at the function's entry)",
    "prefix": "prefix data (raw bytes placed before the function's code)",
}


def _check_printout(text: str, source: str) -> None:
    for word in _KEYWORDS:
        at = text.find(word)
        while at >= 0:
            line_start = text.rfind("\n", 0, at) + 1
            line = _line_at(text, line_start)
            keyword = _KEYWORD.search(_code_of(line))
            if keyword:
                raise PolicyViolation(f"{source}: {_where(text, line_start, line)}: "
                                      f"{_reason(keyword.group(1), line)}")
            at = text.find(word, line_start + len(line))
    # Attribute groups and named metadata follow the functions in the printout: search from the first one (none:
    # no search, which would read the whole printout).
    for group in _SECTION_ATTRIBUTE.finditer(text, _first_line(text, "attributes #")):
        line = _line_at(text, group.start())
        if any("section" in string for string in _STRING_IN_PRINTOUT.findall(line)):
            raise PolicyViolation(f"{source}: an attribute group places code or data in a section "
                                  f"(`{_shorten(line)}`); a section such as .init_array runs code on load")
    for name, value in _NAMED_METADATA.findall(text, _first_line(text, "!")):
        name = unescape_name(name)
        if name.startswith("llvm.") and name not in ALLOWED_NAMED_METADATA and value.strip() != "!{}":
            raise PolicyViolation(f"{source}: named metadata !{name} is refused (llvm.dependent-libraries and "
                                  "llvm.linker.options make the linker add libraries)")
    if '!"Linker Options"' in text:
        raise PolicyViolation(f"{source}: the module flag \"Linker Options\" is refused (it makes the linker add "
                              "libraries)")
    _check_madvise(text, source)
    if f'!"{_SECTION_FLAG}"' in text:  # the printout prints this ASCII key verbatim, however it was written
        raise PolicyViolation(f"{source}: the module flag \"{_SECTION_FLAG}\" is refused (the ELF backend writes "
                              "its data into the section it names; a section such as .init_array runs code on load)")


# madvise is allowed for one advice only: the runtime populates pages it is about to write (MADV_POPULATE_WRITE).
# Any other advice changes what memory holds or how it is shared (MADV_DONTNEED zeroes it, MADV_REMOVE frees a
# file's blocks, MADV_DONTFORK...), so every mention of @madvise must be a direct call with that constant advice.
_MADVISE_NAME = re.compile(r"@madvise(?![-\w$.])")  # the name itself, not a longer one
_HEADER_NAME = re.compile(r"@(?:\"\"|[-\w$.]+)\(")  # a declare/define line's function name (strings emptied)
_MADVISE_CALL = re.compile(r"(?:(?:tail|musttail|notail) )?call i32 @madvise\(ptr(?: noundef)? [^,]+, "
                           rf"i64(?: noundef)? [^,]+, i32(?: noundef)? {MADV_POPULATE_WRITE}\)(?: #\d+)?$")


def _check_madvise(text: str, source: str) -> None:
    at = text.find("@madvise")
    while at >= 0:
        line_start = text.rfind("\n", 0, at) + 1
        line = _line_at(text, line_start)
        code = _code_of(line).strip()
        if code.startswith(("declare ", "define ")):  # its own name may be @madvise; any other mention (a
            header = _HEADER_NAME.search(code)         # personality, which the unwinder calls) may not
            code = code[header.end():] if header else code
            refused = _MADVISE_NAME.search(code) is not None
        else:
            refused = _MADVISE_NAME.search(code) is not None and not _MADVISE_CALL.search(code)
        if refused:
            raise PolicyViolation(f"{source}: {_where(text, line_start, line)}: madvise may only be called "
                                  f"directly, with the advice MADV_POPULATE_WRITE ({MADV_POPULATE_WRITE})")
        at = text.find("@madvise", line_start + len(line))


def _first_line(text: str, start: str) -> int:
    """Where the first line beginning with `start` begins; the text's length if none does."""
    if text.startswith(start):
        return 0
    at = text.find("\n" + start)
    return len(text) if at < 0 else at + 1


def _code_of(line: str) -> str:
    """A printout line without its strings' contents and its comment."""
    return _STRING_IN_PRINTOUT.sub('""', line).split(";", 1)[0]


def _reason(keyword: str, line: str) -> str:
    if keyword == "asm" and line.startswith("module asm"):
        return "module-level assembly (assembled into the library unchecked; it can define ifuncs)"
    return _KEYWORD_REASONS[keyword]


def _where(text: str, line_start: int, line: str) -> str:
    """`function @f: `instruction`` inside a function body, else the top-level line itself."""
    if line.startswith((" ", "\t")):
        define = text.rfind("\ndefine ", 0, line_start)
        header = _line_at(text, define + 1)
        names = (m.group(1) for m in _FUNCTION_NAME.finditer(header) if m.group(1))
        function = f"@{next(names, '?')}"
        return f"function {function}: `{_shorten(line.strip())}`"
    return f"`{_shorten(line)}`"


def _line_at(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start:end if end >= 0 else None]


def _shorten(line: str, limit: int = 160) -> str:
    return line if len(line) <= limit else line[:limit - 3] + "..."


def unescape_name(quoted: str) -> str:
    """LLVM's reading of an escaped name (a quoted global, a metadata name): `\\XX` is a hex byte, `\\\\` a
    backslash, any other `\\` itself."""
    raw = re.sub(rb"\\(\\|[0-9A-Fa-f]{2})", lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1), 16)]),
                 quoted.encode())
    return raw.decode("utf-8", "surrogateescape")


# ---- what the modules of one library define ----

_DEFINED_MEMO: OrderedDict[str, frozenset[str]] = OrderedDict()
_DEFINED_MEMO_SIZE = 512


def defined_functions(ir_text: str) -> frozenset[str]:
    """Functions a module defines, as LLVM parses it: the other modules of the same library may import them.
    Memoised by content, so relinking a large ruleset parses only the modules that changed."""
    digest = hashlib.sha256(ir_text.encode()).hexdigest()
    names = _DEFINED_MEMO.get(digest)
    if names is None:
        try:
            module = parse_ir(ir_text)
        except (StageFailed, PolicyViolation):
            names = frozenset()  # a module LLVM cannot parse provides nothing; its own compile reports why
        else:
            names = defined_function_names(module)
        _DEFINED_MEMO[digest] = names
        while len(_DEFINED_MEMO) > _DEFINED_MEMO_SIZE:
            _DEFINED_MEMO.popitem(last=False)
    _DEFINED_MEMO.move_to_end(digest)
    return names


def defined_function_names(module: Any) -> frozenset[str]:
    """The functions the module defines for other modules: an internal or private one is not visible to the
    linker, and another module's import of its name would resolve to whatever else has it (the process's, in
    memory)."""
    import llvmlite.binding as llvm

    local = (llvm.Linkage.internal, llvm.Linkage.private)
    return frozenset(fn.name for fn in module.functions if not _is_declaration(fn) and fn.linkage not in local)


def _allowed() -> str:
    return ", ".join(sorted(ALLOWED_IMPORTS))
