"""What the farm will build and load: no code that runs on load, no imports beyond an allow-list.

Two checks, because either alone can be bypassed. The IR check refuses what a module shows (declared
imports, inline asm, constructors, load-time resolvers) before any tool runs, with the line at fault.
The ELF check refuses what a linked library really imports or runs when loaded, whatever produced it
(calls the backend lowered to libcalls included); the loader runs it again before every dlopen.
"""

from __future__ import annotations

import re

from farm.errors import PolicyViolation

ALLOWED_IMPORTS = frozenset({"malloc", "calloc", "realloc", "free", "memcpy", "memmove", "memset"})
MAX_IR_BYTES = 256 << 20  # a module larger than this is refused before it reaches a tool

# An LLVM global name: group 1 is a quoted name's text, group 2 a bare name. Shared with the JIT's renaming.
IR_NAME = r'(?:"((?:[^"\\]|\\.)*)"|([-a-zA-Z$._][-a-zA-Z$._0-9]*))'
DEFINE = re.compile(rf"^[ \t]*define\b[^@\n]*@{IR_NAME}[ \t]*\(", re.MULTILINE)
GLOBAL_DEFINITION = re.compile(rf"^[ \t]*@{IR_NAME}[ \t]*=", re.MULTILINE)
_DECLARE = re.compile(rf"^[ \t]*declare\b[^@\n]*@{IR_NAME}[ \t]*\(", re.MULTILINE)
_EXTERNAL_GLOBAL = re.compile(rf"^[ \t]*@{IR_NAME}[ \t]*=[ \t]*(?:[a-z_]+[ \t]+)*?(?:external|extern_weak)\b",
                              re.MULTILINE)
_CONSTRUCTORS = re.compile(r'^[ \t]*@"?llvm\.global_[cd]tors\b', re.MULTILINE)
_LOAD_TIME_SECTION = re.compile(r'\bsection[ \t]+"([^"\n]*(?:init|fini|ctors|dtors)[^"\n]*)"')
_SUSPECT_WORD = re.compile(r"\b(?:asm|ifunc)\b")
_STRING = re.compile(r'c?"(?:[^"\\\n]|\\.)*"')


def defined_functions(ir_text: str) -> set[str]:
    """Functions a module defines: the other modules of the same library may import them."""
    return {m.group(1) or m.group(2) for m in DEFINE.finditer(ir_text)}


def check_ir(ir_text: str, source: str = "module", provided: frozenset[str] = frozenset()) -> None:
    """Refuse IR that would import or run anything beyond the allow-list; PolicyViolation names the line.
    `provided`: functions the other modules linked into the same library define.

    Whole-text scans, not a loop over lines: generated modules run to hundreds of thousands of lines."""
    if len(ir_text) > MAX_IR_BYTES:
        raise PolicyViolation(f"{source}: the IR is {len(ir_text):,} bytes; the limit is {MAX_IR_BYTES:,}")

    def refuse(at: int, reason: str) -> PolicyViolation:
        return PolicyViolation(f"{source}:{ir_text.count(chr(10), 0, at) + 1}: {reason}")

    for declared in _DECLARE.finditer(ir_text):
        name = declared.group(1) or declared.group(2)
        if name not in ALLOWED_IMPORTS and name not in provided and not name.startswith("llvm."):
            raise refuse(declared.start(), f"declares the external function @{name}; only {_allowed()} and LLVM "
                                    "intrinsics may be imported")
    m = _EXTERNAL_GLOBAL.search(ir_text)
    if m:
        raise refuse(m.start(), f"imports the external global @{m.group(1) or m.group(2)}; no global may be imported")
    m = _CONSTRUCTORS.search(ir_text)
    if m:
        raise refuse(m.start(), "defines a global constructor or destructor, which would run code on load")
    m = _LOAD_TIME_SECTION.search(ir_text) if "section" in ir_text else None  # `in` first: regexes are slow
    if m:
        raise refuse(m.start(), f"places code or data in section {m.group(1)!r}, which runs on load")
    suspects = _SUSPECT_WORD.finditer(ir_text) if "asm" in ir_text or "ifunc" in ir_text else ()
    for suspect in suspects:  # rare: then look at the whole line, outside strings and comments
        line_start = ir_text.rfind("\n", 0, suspect.start()) + 1
        line_end = ir_text.find("\n", suspect.start())
        code = _STRING.sub('""', _strip_comment(ir_text[line_start:line_end if line_end >= 0 else None]))
        word = _SUSPECT_WORD.search(code)
        if word:
            raise refuse(suspect.start(), "contains inline assembly" if word.group() == "asm"
                         else "defines an ifunc, whose resolver would run on load")


def _strip_comment(line: str) -> str:
    """The line without its `;` comment, where a `;` inside a string does not start one."""
    if '"' not in line:
        return line.split(";", 1)[0]
    in_string = False
    for i, char in enumerate(line):
        if char == '"' and (i == 0 or line[i - 1] != "\\"):
            in_string = not in_string
        elif char == ";" and not in_string:
            return line[:i]
    return line


def _allowed() -> str:
    return ", ".join(sorted(ALLOWED_IMPORTS))
