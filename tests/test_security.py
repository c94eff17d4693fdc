"""Hostile input: IR that would import or run code on load, toolchain resource limits, hostile pattern IDs,
and tampered, truncated or swapped artifacts, each refused before dlopen with its reason."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import farm.compiler.policy
import farm.runtime.loader
from farm.cache.builder import Artifact
from farm.cache.engine import Engine, load_native
from farm.cache.jit import JitCompiler, JitConfig
from farm.cache.signing import KeyPair
from farm.compiler.elf_policy import check_library
from farm.compiler.tools import find_tool
from farm.config import FarmConfig
from farm.errors import BadSignature, IntegrityError, PolicyViolation, StageFailed, StageTimeout
from farm.runtime.loader import NativeRuleset, open_library, sha256_file

from .conftest import check_ir, ruleset_of

PEANO = "rule p0: (plus 0 ?y) => ?y\nrule ps: (plus (s ?x) ?y) => (s (plus ?x ?y))"


@pytest.mark.parametrize(("module", "reason"), [
    ("declare i32 @system(ptr)", "declares the external function @system"),
    ('declare i32 @"exe cve"(ptr, ptr)', "external function @exe cve"),
    ("  declare ptr @dlopen(ptr, i32)", "external function @dlopen"),
    ("@environ = external global ptr", "imports the external global @environ"),
    ("@w = extern_weak dso_local global i32", "external global @w"),
    ("@llvm.global_ctors = appending global [0 x { i32, ptr, ptr }] zeroinitializer",
     "@llvm.global_ctors .*constructors"),
    ('define void @g() section ".init_array" {\n  ret void\n}', "explicit section"),
    ('define void @g() {\n  call void asm sideeffect "syscall", ""()\n  ret void\n}',
     'function @g: `call void asm sideeffect "syscall", ""\\(\\)`: inline assembly'),
    ('module asm "nop"', "module-level assembly"),
    ("@r = ifunc void (), ptr @resolver\ndefine internal ptr @resolver() {\n  ret ptr null\n}", "ifunc"),
])
def test_ir_policy_refuses_imports_and_load_time_code(module: str, reason: str) -> None:
    with pytest.raises(PolicyViolation, match=reason) as info:
        check_ir(f"; a module\n{module}\n", "user.ll")
    assert str(info.value).startswith("user.ll: ")  # the module at fault, then the function or global


@pytest.mark.parametrize("line", ["declare ptr @malloc(i64)", 'declare void @"free"(ptr)',
                                  "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)",
                                  '@s = constant [4 x i8] c"asm\\00" ; "asm" in a string and a comment',
                                  "@g = global i64 0"])
def test_ir_policy_allows_the_allow_list(line: str) -> None:
    check_ir(f"{line}\n")


def test_huge_ir_is_refused_before_any_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(farm.compiler.policy, "MAX_IR_BYTES", 1000)
    with pytest.raises(PolicyViolation, match="the limit is 1,000"):
        check_ir("; x\n" * 400)


@pytest.fixture
def jit(tmp_path: Path) -> JitCompiler:
    return JitCompiler(JitConfig(work_dir=tmp_path / "w", cache_dir=tmp_path / "c"))


def test_jit_refuses_a_call_to_a_system_function_and_builds_nothing(jit: JitCompiler, tmp_path: Path) -> None:
    ir = ("declare i32 @system(ptr)\n@cmd = constant [3 x i8] c\"id\\00\"\n"
          "define i64 @f(i64 %x) {\n  %r = call i32 @system(ptr @cmd)\n  ret i64 %x\n}\n")
    with pytest.raises(PolicyViolation, match="@system"):  # a policy refusal never falls back silently
        jit.compile_llvm_ir(ir, "evil")
    assert not list((tmp_path / "c").rglob("*.so")) and not list((tmp_path / "c").rglob("*.o"))


def test_a_libcall_the_backend_introduces_is_caught_in_the_linked_library(jit: JitCompiler) -> None:
    """A 128-bit division passes the IR check (plain IR) but lowers to an import of __divti3: the ELF check
    sees it. (llvm.sin would do the same, but the IR check already refuses that intrinsic.)"""
    ir = "define i128 @f(i128 %x, i128 %y) {\n  %r = sdiv i128 %x, %y\n  ret i128 %r\n}\n"
    check_ir(ir)
    with pytest.raises(PolicyViolation, match="imports __divti3"):
        jit.compile_llvm_ir(ir, "div")


def link(tmp_path: Path, ir: str) -> Path:
    """A library built by hand, around farm's own checks, as an attacker with store access would."""
    (tmp_path / "m.ll").write_text(ir)
    subprocess.run([find_tool("llc"), "-filetype=obj", "-relocation-model=pic", "m.ll", "-o", "m.o"],
                   cwd=tmp_path, check=True)
    subprocess.run([find_tool("ld.lld"), "-shared", "m.o", "-o", "m.so"], cwd=tmp_path, check=True)
    return tmp_path / "m.so"


def test_a_library_with_a_constructor_is_refused_before_dlopen(tmp_path: Path) -> None:
    # If this library were ever dlopen'ed, its constructor would abort the test process.
    so = link(tmp_path, "declare void @abort()\n"
                        "define internal void @boom() {\n  call void @abort()\n  ret void\n}\n"
                        "@llvm.global_ctors = appending global [1 x { i32, ptr, ptr }] "
                        "[{ i32, ptr, ptr } { i32 65535, ptr @boom, ptr null }]\n")
    with pytest.raises(PolicyViolation, match=r"runs code on load \(DT_INIT_ARRAY"):
        open_library(so, None)


def test_a_library_importing_a_system_function_is_refused_before_dlopen(tmp_path: Path) -> None:
    so = link(tmp_path, "declare i32 @getpid()\ndefine i32 @f() {\n  %p = call i32 @getpid()\n  ret i32 %p\n}\n")
    with pytest.raises(PolicyViolation, match="imports getpid"):
        check_library(so)
    (tmp_path / "junk.so").write_bytes(b"\x7fELF\x02\x01" + b"\0" * 40)
    with pytest.raises(PolicyViolation, match="malformed: 46 bytes is too short"):
        check_library(tmp_path / "junk.so")


def test_each_stage_runs_under_memory_and_time_limits(tmp_path: Path) -> None:
    starved = Engine(FarmConfig(cache_dir=tmp_path / "a", stage_memory_mb=16))
    with pytest.raises(StageFailed) as info:
        starved.compile(ruleset_of(PEANO), "p", "x86-64")
    assert info.value.stage == "llvm-as" and not list((tmp_path / "a").rglob("*.so"))
    hurried = Engine(FarmConfig(cache_dir=tmp_path / "b", stage_timeout=0.001))
    with pytest.raises(StageTimeout, match="llvm-as"):
        hurried.compile(ruleset_of(PEANO), "p", "x86-64")


def test_a_stage_limit_above_the_process_hard_limit_runs_under_the_hard_limit(tmp_path: Path) -> None:
    """FARM_STAGE_MEMORY_MB (4096 by default) above what the process may raise to: the stage runs capped at
    the hard limit instead of failing in the child before exec."""
    rules = tmp_path / "p.farm"
    rules.write_text(PEANO + "\n")
    hard = 3 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))

    proc = subprocess.run([sys.executable, "-m", "farm.cli", "compile", str(rules), "--target", "x86-64"],
                          capture_output=True, text=True, preexec_fn=cap, timeout=120,
                          env={**os.environ, "FARM_CACHE_DIR": str(tmp_path / "c"), "FARM_COMPILE_PATH": "staged"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("setting", [("FARM_STAGE_MEMORY_MB", "99999999999999999"),
                                     ("FARM_STAGE_TIMEOUT", "1e20"), ("FARM_STAGE_TIMEOUT", "1e300")])
def test_a_stage_limit_beyond_what_rlimit_can_hold_runs_the_stage_unlimited(tmp_path: Path,
                                                                         setting: tuple[str, str]) -> None:
    """A valid setting larger than an rlimit can hold (an address space of 10^17 MiB, 10^20 seconds of CPU)
    means no limit, never a SubprocessError traceback from the child before exec."""
    rules = tmp_path / "p.farm"
    rules.write_text(PEANO + "\n")
    name, value = setting
    proc = subprocess.run([sys.executable, "-m", "farm.cli", "compile", str(rules), "--target", "x86-64"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FARM_CACHE_DIR": str(tmp_path / "c"), "FARM_COMPILE_PATH": "staged",
                               name: value})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


# ---- tampered, truncated and swapped artifacts ----

@pytest.fixture
def signed(tmp_path: Path, key_pair: KeyPair) -> Engine:
    return Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=0, signing_key=key_pair.private_path))


def test_truncated_library_is_refused_before_dlopen(signed: Engine) -> None:
    art = signed.compile(ruleset_of(PEANO), "a", "x86-64")
    data = art.path.read_bytes()
    art.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="sha256 is .* refusing to load it"):
        NativeRuleset(art.path, ruleset_of(PEANO), art.meta.sha256)


def test_a_library_swapped_after_its_check_is_never_the_one_loaded(signed: Engine,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The race a writer of the cache directory could win: the file changes between the check and dlopen.
    The loader reads it once, so the checked bytes are the loaded bytes."""
    a = signed.compile(ruleset_of(PEANO), "a", "x86-64")
    b = signed.compile(ruleset_of(PEANO + "\nrule q: (q ?x) => ?x"), "b", "x86-64")
    checked = farm.runtime.loader.check_library

    def check_then_swap(library: Path | bytes, name: str = "library") -> None:
        checked(library, name)
        shutil.copy(b.path, a.path)  # too late: what was checked is what will be loaded

    monkeypatch.setattr(farm.runtime.loader, "check_library", check_then_swap)
    native = NativeRuleset(a.path, ruleset_of(PEANO), a.meta.sha256)  # built for A, checked as A
    assert native.lib.farm_fingerprint() == ruleset_of(PEANO).fingerprint().encode()
    assert a.path.read_bytes() == b.path.read_bytes()  # the swap did happen on disk


def test_swapped_artifacts_are_refused_with_the_reason(signed: Engine, caplog: pytest.LogCaptureFixture) -> None:
    a = signed.compile(ruleset_of(PEANO), "a", "x86-64")
    b = signed.compile(ruleset_of(PEANO + "\nrule q: (q ?x) => ?x"), "b", "x86-64")
    store = signed.builder.store
    meta_a = a.path.with_suffix(".json")
    # 1. The other artifact's library and metadata, both valid, under this key.
    shutil.copy(b.path, a.path)
    shutil.copy(b.path.with_suffix(".json"), meta_a)
    with pytest.raises(IntegrityError, match="describes artifact .*: swapped"):
        store.fetch(a.meta.key)
    with caplog.at_level(logging.WARNING, logger="farm.cache.builder"):
        rebuilt = signed.compile(ruleset_of(PEANO), "a", "x86-64")
    assert not rebuilt.cached and "swapped" in caplog.text  # refused, rebuilt, never served
    # 2. The other library, with this key's metadata edited to its sha256: only the signature catches it,
    # on a loading node and in the builder, which rebuilds (and re-signs) rather than serve it.
    shutil.copy(b.path, rebuilt.path)
    meta = json.loads(meta_a.read_text())
    meta["sha256"] = b.meta.sha256
    meta_a.write_text(json.dumps(meta))
    fetched = store.fetch(a.meta.key)
    assert fetched is not None and fetched[1].sha256 == b.meta.sha256 == sha256_file(fetched[0])
    with pytest.raises(BadSignature, match="bad signature"):
        load_native(ruleset_of(PEANO), Artifact(fetched[1], fetched[0], True, 0.0), signed.builder.trusted)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="farm.cache.builder"):
        resigned = signed.compile(ruleset_of(PEANO), "a", "x86-64")
    assert not resigned.cached and "bad signature" in caplog.text
    assert resigned.meta.sha256 == a.meta.sha256 and load_native(ruleset_of(PEANO), resigned, signed.builder.trusted)
    # 3. Truncated metadata.
    meta_a.write_text(meta_a.read_text()[:40])
    with pytest.raises(IntegrityError, match="unreadable"):
        store.fetch(a.meta.key)


# ---- hostile pattern IDs ----

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=300),
    st.lists(st.sampled_from(["..", "/", "\\", "\n", "'", '"', "%", "@", "$(id)", "\u202e", "\x7f"]),
             min_size=1, max_size=40).map("".join),
))
def test_any_pattern_id_is_only_data(session_engine: Engine, pattern_id: str) -> None:
    art = session_engine.compile(ruleset_of(PEANO), pattern_id, "x86-64")
    root = session_engine.config.cache_dir.resolve()
    assert art.path.resolve().is_relative_to(root) and art.path.name == f"{art.meta.key}.so"
    assert session_engine.builder.index.lookup(pattern_id, "x86-64") == art.meta.key
    # The same key for every ID: a pattern ID never reaches the IR, so it can never break an identifier.
    assert art.meta.key == session_engine.compile(ruleset_of(PEANO), "plain", "x86-64").meta.key
