"""Hostile IR corpus: every payload that would import or run code on load, hidden behind LLVM's string-escape
trick (a quoted name or string ending in `\\`: LLVM has no escape for `"`, so `"a\\"` is a whole name) in every
position where LLVM allows a quoted name or string. Each case is refused by check_ir and end to end by
JitCompiler.compile_llvm_ir on both compile paths, with the payload's reason; a canary file that the payloads
would create, run in a subprocess, proves nothing ran. Print the corpus size with `pytest -s`."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import farm.compiler.policy
from farm.cache.jit import JitCompiler, JitConfig, rename_definitions
from farm.compiler.toolchain import Toolchain
from farm.errors import PolicyViolation, StageFailed
from farm.targets import REGISTRY

from .conftest import check_ir, count_hostile

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Position:
    """A place where LLVM takes a quoted name or string; `{q}` is the quoted text, which ends in a backslash.
    The payload follows on the same line (LLVM's parser does not care about newlines; a line-based reader does)."""
    name: str
    top: str = ""  # a top-level entity before the function
    body: str = ""  # an instruction or label at the start of @f's body
    function: str = "@f"  # the function's name
    argument: str = "%x"
    reason: str | None = None  # the position's own refusal, if it is itself refused

    def module(self, payload: Payload, quoted: str = "a\\") -> str:
        size = len(re.sub(r"\\\\|\\[0-9A-Fa-f]{2}", "x", quoted).encode())  # its length once LLVM unescapes it
        fill = {"q": quoted, "n": str(size)}
        return (f"{self.top.format(**fill)} define i64 {self.function.format(**fill)}(i64 "
                f"{self.argument.format(**fill)}) {{ {self.body.format(**fill)} {payload.body} ret i64 0 }} "
                f"{payload.top}\n")


@dataclass(frozen=True)
class Payload:
    name: str
    top: str  # top-level entities
    body: str  # instructions in @f
    reason: str  # what the refusal must say


POSITIONS = [
    Position("local value name", body='%"{q}" = add i64 0, 0'),
    Position("argument name", argument='%"{q}"'),
    Position("label", body='br label %"{q}" "{q}":'),
    Position("function name", function='@"{q}"'),
    Position("global name", top='@"{q}" = internal global i64 0'),
    Position("string constant", top='@s = internal constant [{n} x i8] c"{q}"'),
    Position("metadata string", top='!100 = !{{!"{q}"}}'),
    Position("named metadata", top='!trick = !{{!101}} !101 = !{{!"{q}"}}'),
    Position("struct type name", top='%"{q}" = type {{ i64 }} @t = internal global %"{q}" zeroinitializer'),
    Position("comdat name", top='$"{q}" = comdat any @c = internal global i64 0, comdat($"{q}")'),
    Position("string attribute", top='@ga = internal global i64 0 #7 attributes #7 = {{ "{q}"="{q}" }}'),
    Position("source file name", top='source_filename = "{q}"'),
    Position("comment", top='; a comment "{q}" @"\n'),
    Position("section name", top='@sec = internal global i64 0, section "{q}"', reason="explicit section"),
    Position("partition name", top='@par = global i64 0, partition "{q}"', reason="explicit partition"),
    Position("module asm string", top='module asm "{q}"', reason="module-level assembly"),
    Position("inline asm string", body='call void asm sideeffect "{q}", ""()', reason="inline assembly"),
]

RESOLVER = "define internal ptr @resolve() { ret ptr null }"
BOOM = "define internal void @boom() { ret void }"
PAYLOADS = [
    Payload("inline asm", "", 'call i64 asm sideeffect "syscall", "={rax},{rax},~{rcx},~{r11}"(i64 39)',
            "function @.*: `.*asm sideeffect.*`: inline assembly"),
    Payload("module asm", 'module asm ".globl pwn"', "", "module-level assembly"),
    Payload("ifunc", f"@i = ifunc void (), ptr @resolve {RESOLVER}", "", "ifunc"),
    Payload("alias to an ifunc", f"@a = alias void (), ptr @i @i = ifunc void (), ptr @resolve {RESOLVER}", "",
            "alias|ifunc"),
    Payload("read_register", 'declare i64 @llvm.read_register.i64(metadata) !200 = !{!"rsp"}',
            "call i64 @llvm.read_register.i64(metadata !200)", "intrinsic @llvm.read_register.i64"),
    Payload("write_register", 'declare void @llvm.write_register.i64(metadata, i64) !201 = !{!"rsp"}',
            "call void @llvm.write_register.i64(metadata !201, i64 0)", "intrinsic @llvm.write_register.i64"),
    Payload("frameaddress", "declare ptr @llvm.frameaddress.p0(i32)", "call ptr @llvm.frameaddress.p0(i32 0)",
            "intrinsic @llvm.frameaddress.p0"),
    Payload("libm intrinsic", "declare double @llvm.sin.f64(double)", "call double @llvm.sin.f64(double 1.0)",
            "intrinsic @llvm.sin.f64"),
    Payload("constructor", "@llvm.global_ctors = appending global [1 x { i32, ptr, ptr }] "
            "[{ i32, ptr, ptr } { i32 65535, ptr @ctor, ptr null }] define internal void @ctor() { ret void }", "",
            "@llvm.global_ctors"),
    Payload("destructor", "@llvm.global_dtors = appending global [1 x { i32, ptr, ptr }] "
            "[{ i32, ptr, ptr } { i32 65535, ptr @ctor, ptr null }] define internal void @ctor() { ret void }", "",
            "@llvm.global_dtors"),
    Payload("init_array section", f'@init = internal global ptr @boom, section ".init_array" {BOOM}', "",
            "explicit section"),
    Payload("section attribute", f'@init = internal global ptr @boom #8 {BOOM} attributes #8 = {{ "data-section"='
            '".init_array" }', "", "attribute group places code or data in a section"),
    Payload("function section", 'define void @g() section ".init" { ret void }', "", "explicit section"),
    Payload("external global", "@environ = external global ptr", "load ptr, ptr @environ", "external global @environ"),
    Payload("disallowed declaration", "declare i32 @getpid()", "call i32 @getpid()", "external function @getpid"),
    Payload("available_externally body", "define available_externally i32 @getppid() { ret i32 0 }",
            "call i32 @getppid()", "external function @getppid"),
    Payload("_init", "define void @_init() { ret void }", "", "@_init.*load-time"),
    Payload("dependent library", '!llvm.dependent-libraries = !{!202} !202 = !{!"/tmp/evil.so"}', "",
            "dependent-libraries"),
    Payload("prologue data", "define void @g() prologue i8 144 { ret void }", "", "prologue data"),
    # The ELF backend writes this flag's two i32s into the section its string names: .init_array, or .text.
    Payload("section module flag", '!llvm.module.flags = !{!203} !203 = !{i32 1, !"Objective-C Image Info '
            'Section", !".init_array"}', "", "Objective-C Image Info Section"),
]

CASES = [pytest.param(position, payload, id=f"{position.name}-{payload.name}")
         for position, payload in itertools.product(POSITIONS, PAYLOADS)]


def expected(position: Position, payload: Payload) -> str:
    return payload.reason if position.reason is None else f"{payload.reason}|{position.reason}"


def test_the_corpus_is_valid_ir() -> None:
    """A case LLVM cannot parse would be refused for the wrong reason: every one parses with llvmlite (the policy
    and the in-process path). The staged path's test below proves llvm-as-16 parses each: its refusal comes from
    the check of the bitcode llvm-as wrote."""
    import llvmlite.binding as llvm

    for position, payload in itertools.product(POSITIONS, PAYLOADS):
        llvm.parse_assembly(position.module(payload)).verify()


@pytest.mark.parametrize(("position", "payload"), CASES)
def test_check_ir_refuses_each_payload_behind_each_trick(position: Position, payload: Payload) -> None:
    with pytest.raises(PolicyViolation, match=expected(position, payload)) as info:
        check_ir(position.module(payload), "hostile.ll")
    assert str(info.value).startswith("hostile.ll: ")
    count_hostile("hostile IR", "refused by check_ir")


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(POSITIONS), st.sampled_from(PAYLOADS),
       st.text(st.characters(codec="ascii", exclude_characters='"\0\n{}'), max_size=12))
def test_any_text_ending_in_a_backslash_hides_nothing(position: Position, payload: Payload, text: str) -> None:
    ir = position.module(payload, text.replace("\\", "\\\\") + "\\")
    with pytest.raises((PolicyViolation, StageFailed)) as info:  # never accepted, whatever the text
        check_ir(ir, "hostile.ll")
    # Refused for the payload itself, unless the text is refused on its own: a name in LLVM's reserved llvm.*
    # space, or a carriage return (LLVM's lexer ends a comment there, and the rest of the line does not parse).
    if not text.startswith("llvm.") and "\r" not in text:
        assert isinstance(info.value, PolicyViolation) and re.search(expected(position, payload), str(info.value))
    count_hostile("hostile IR", "generated backslash names refused")


@pytest.fixture(scope="module", params=["staged", "inprocess"])
def strict_jit(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> JitCompiler:
    root = tmp_path_factory.mktemp(request.param)
    return JitCompiler(JitConfig(work_dir=root / "w", cache_dir=root / "c", fallback_to_interpretation=False,
                                 compile_path=request.param))


@pytest.mark.parametrize(("position", "payload"), CASES)
def test_compile_llvm_ir_refuses_each_case_on_both_paths(strict_jit: JitCompiler, position: Position,
                                                         payload: Payload) -> None:
    with pytest.raises(PolicyViolation, match=expected(position, payload)):
        strict_jit.compile_llvm_ir(position.module(payload), "hostile")
    assert strict_jit.get_stats().successful_compilations == 0
    count_hostile("hostile IR", "refused by compile_llvm_ir")


# ---- the payloads that would do something: a canary file proves they did not run ----

def canary_payloads(canary: Path) -> list[Payload]:
    path = json.dumps(str(canary))[1:-1]
    size = len(str(canary).encode()) + 1
    data = f'@path = internal constant [{size} x i8] c"{path}\\00"'
    creat = ('call i64 asm sideeffect "syscall", "={rax},{rax},{rdi},{rsi},~{rcx},~{r11},~{memory}"'
             "(i64 85, ptr @path, i64 420)")  # creat(path, 0644)
    ifunc_asm = [".text", ".globl pwn", ".type pwn, @gnu_indirect_function", "pwn:", "  lea canary(%rip), %rdi",
                 "  mov $420, %esi", "  mov $85, %eax", "  syscall", "  lea pwn_impl(%rip), %rax", "  ret",
                 "pwn_impl: ret", f"canary: .asciz \\22{path}\\22", ".data", "pwnptr: .quad pwn", ".text"]
    return [
        Payload("syscall in inline asm", data, creat, "inline assembly"),
        Payload("ifunc resolver in module asm", " ".join(f'module asm "{line}"' for line in ifunc_asm), "",
                "module-level assembly"),
        Payload("constructor", f"{data} declare i32 @creat(ptr, i32) @llvm.global_ctors = appending global "
                "[1 x { i32, ptr, ptr }] [{ i32, ptr, ptr } { i32 65535, ptr @ctor, ptr null }] "
                "define internal void @ctor() { call i32 @creat(ptr @path, i32 420) ret void }", "",
                "@creat|@llvm.global_ctors"),
        Payload("ifunc resolver", f"{data} @i = ifunc void (), ptr @res define internal ptr @res() {{ {creat} "
                "ret ptr null } @use = global ptr @i", "", "inline assembly|ifunc"),
    ]


CANARY_RUNNER = """
import ctypes, json, sys
from pathlib import Path
from farm.errors import PolicyViolation, StageFailed
from farm.cache.jit import JitCompiler, JitConfig
root, cases = Path(sys.argv[1]), json.loads(sys.stdin.read())
refusals = []
for path in ("staged", "inprocess"):
    jit = JitCompiler(JitConfig(work_dir=root / path / "w", cache_dir=root / path / "c",
                                fallback_to_interpretation=False, compile_path=path))
    for k, ir in enumerate(cases):
        try:
            f = jit.compile_llvm_ir(ir, f"canary{k}")
        except PolicyViolation as exc:
            refusals.append(str(exc))
        else:  # refused nowhere: call it, as a user would, so that the canary shows the hole
            ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(f.function_pointer)(0)
            refusals.append(None)
print(json.dumps(refusals))
"""


def test_canary_payloads_are_refused_before_anything_runs(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payloads = canary_payloads(canary)
    cases = [(position, payload) for position in POSITIONS if position.reason is None for payload in payloads]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARM_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", CANARY_RUNNER, str(tmp_path)], input=json.dumps(
        [position.module(payload) for position, payload in cases]), capture_output=True, text=True, env=env,
        timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    refusals = json.loads(out.stdout.splitlines()[-1])
    assert not canary.exists()
    assert len(refusals) == 2 * len(cases)
    for reason, (position, payload) in zip(refusals, cases * 2, strict=True):
        assert reason is not None and re.search(payload.reason, reason), (position.name, payload.name)
    count_hostile("hostile IR", "canary compiles refused, nothing ran", len(refusals))


# ---- the JIT's names come from the parser ----

TRICKY = ('@"k\\" = internal constant i64 3 ; @"k\\" in a comment, and in a string: @s\n'
          '@s = internal constant [5 x i8] c"@\\22k\\\\\\00"\n'
          'define i64 @"f\\"(i64 %x) {\n  %k = load i64, ptr @"k\\"\n  %r = mul i64 %x, %k\n  ret i64 %r\n}\n'
          'define i64 @"g\\41"(i64 %x) {\n  %r = call i64 @"f\\"(i64 %x)\n  ret i64 %r\n}\n')


def test_renaming_touches_exactly_the_definitions_the_parser_named() -> None:
    renamed = rename_definitions(TRICKY, ".farm0")
    import llvmlite.binding as llvm

    module = llvm.parse_assembly(renamed)
    assert {f.name for f in module.functions} == {"f\\.farm0", "gA.farm0"}
    assert {g.name for g in module.global_variables} == {"k\\.farm0", "s.farm0"}
    assert '; @"k\\" in a comment' in renamed and 'c"@\\22k\\\\\\00"' in renamed  # comments, strings: untouched


def test_a_batch_of_tricky_names_links_and_runs(tmp_path: Path) -> None:
    jit = JitCompiler(JitConfig(work_dir=tmp_path / "w", cache_dir=tmp_path / "c", fallback_to_interpretation=False))
    plain = "define i64 @f(i64 %x) {\n  %r = add i64 %x, 1\n  ret i64 %r\n}\n"
    first, second = jit.compile_batch([(TRICKY, "tricky"), (plain, "plain")])
    assert first.name == "f\\" and second.name == "f"
    import ctypes

    call = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)
    assert call(first.function_pointer)(5) == 15 and call(second.function_pointer)(5) == 6


# ---- what must still pass ----

def test_farm_modules_optimised_by_opt_still_pass() -> None:
    """The intrinsic allow-list covers what opt forms from farm's own code (llvm.smax and the like), so IR a
    user optimised beforehand loads; farm's modules themselves (every test compiling a ruleset) pass as emitted."""
    from farm.compiler.codegen.llvm import ruleset_parts
    from farm.compiler.policy import defined_functions
    from farm.compiler.tools import find_tool

    from .conftest import EXAMPLES, ruleset_of

    parts = ruleset_parts(ruleset_of((EXAMPLES / "arith.farm").read_text()))
    provided = frozenset().union(*(defined_functions(text) for _, text in parts))
    for name, text in parts:
        optimised = subprocess.run([find_tool("opt"), "-O3", "-S", "-", "-o", "-"], input=text, capture_output=True,
                                   text=True, check=True).stdout
        check_ir(optimised, name, provided)


@pytest.mark.parametrize("call", [
    "call void @llvm.memcpy.p0.p0.i64(ptr %p, ptr %p, i64 8, i1 false)",
    "call i64 @llvm.smax.i64(i64 1, i64 2)",
    "call { i64, i1 } @llvm.sadd.with.overflow.i64(i64 1, i64 2)",
    "call i64 @llvm.ctpop.i64(i64 7)",
    "call void @llvm.lifetime.start.p0(i64 8, ptr %p)",
    "call i64 @llvm.expect.i64(i64 1, i64 1)",
])
def test_allowed_intrinsics_pass(call: str) -> None:
    # LLVM 22 declares a known intrinsic a module calls without declaring it.
    check_ir(f"define void @f(ptr %p) {{\n  {call}\n  ret void\n}}\n")


# ---- data out of all proportion to the text ----

BIG_DATA = {
    "constant zero array": "@big = constant [{n} x i8] zeroinitializer",
    "nested arrays": "@big = internal constant [{k} x [1024 x i8]] zeroinitializer",
    "struct of arrays": "@big = constant {{ [{n} x i8], i64 }} zeroinitializer",
    "writable zero array": "@big = global [{n} x i8] zeroinitializer",
    "many globals": "\n".join(f"@g{i} = constant [{{q}} x i8] zeroinitializer" for i in range(5)),
}


@pytest.mark.parametrize("form", BIG_DATA)
@pytest.mark.parametrize("path", ["check_ir", "staged", "inprocess"])
def test_a_few_bytes_of_ir_cannot_ask_for_gigabytes_of_data(form: str, path: str, tmp_path: Path) -> None:
    """`@big = constant [1 << 36 x i8] zeroinitializer` is 60 bytes of text and 64 GiB of .rodata: the
    in-process path would build the object in this process's memory, the staged one fill the disk. A module's
    data is capped (farm.compiler.policy.MAX_DATA_BYTES), refused before anything is compiled."""
    n = 1 << 36
    text = BIG_DATA[form].format(n=n, k=n >> 10, q=farm.compiler.policy.MAX_DATA_BYTES // 4)
    ir = f"{text}\ndefine i64 @f() {{\n  ret i64 0\n}}\n"
    with pytest.raises(PolicyViolation, match=r"@(big|g\d) .*data .*MAX_DATA_BYTES"):
        if path == "check_ir":
            check_ir(ir)
        else:
            Toolchain(tmp_path, compile_path=path).build_parts([("module", ir)], REGISTRY["x86-64"], 0)
    check_ir(BIG_DATA[form].format(n=1 << 20, k=1 << 10, q=1 << 10) + "\n")  # a megabyte is fine


# ---- madvise: populating pages only ----

MADVISE = "declare i32 @madvise(ptr, i64, i32)\n\ndefine void @f(ptr %p, i64 %n, i32 %a) {{\n  {body}\n  ret void\n}}\n"


def test_madvise_populating_pages_passes() -> None:
    check_ir(MADVISE.format(body="%r = call i32 @madvise(ptr %p, i64 %n, i32 23)"))


@pytest.mark.parametrize("body", [
    "%r = call i32 @madvise(ptr %p, i64 %n, i32 4)",  # MADV_DONTNEED: zeroes memory
    "%r = call i32 @madvise(ptr %p, i64 %n, i32 9)",  # MADV_REMOVE: frees a file's blocks
    "%r = call i32 @madvise(ptr %p, i64 %n, i32 %a)",  # an advice decided at run time
    "%r = tail call i32 @madvise(ptr %p, i64 %n, i32 123)",
    "store ptr @madvise, ptr %p",  # its address, for a call through a pointer later
])
def test_madvise_with_any_other_advice_is_refused(body: str) -> None:
    with pytest.raises(PolicyViolation, match="madvise may only be called directly, with the advice"):
        check_ir(MADVISE.format(body=body))
