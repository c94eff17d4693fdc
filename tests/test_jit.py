"""The seed's JIT API, against the real toolchain."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from farm.cache.jit import JitCompiler, JitConfig
from farm.errors import InvalidIR, StageFailed

ADD = "define i64 @add_k(i64 %x) {{\n  %r = add i64 %x, {k}\n  ret i64 %r\n}}\n"


def call(fn_pointer: int, arg: int) -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(fn_pointer)(arg)


@pytest.fixture
def jit(tmp_path: Path) -> JitCompiler:
    return JitCompiler(JitConfig(work_dir=tmp_path / "work", cache_dir=tmp_path / "cache", max_cached_functions=3))


def test_defaults_match_the_seed() -> None:
    c = JitConfig()
    assert (c.work_dir, c.cache_enabled, c.optimization_level, c.fallback_to_interpretation,
            c.max_cached_functions) == (Path("/tmp/pattern_jit"), True, 2, True, 1000)
    with pytest.raises(ValueError):
        JitConfig(optimization_level=4)


def test_compile_call_and_cache(jit: JitCompiler) -> None:
    f = jit.compile_llvm_ir(ADD.format(k=3), "p1")
    assert f.name == "add_k" and f.pattern_id == "p1" and f.native_code_path and f.native_code_path.exists()
    assert call(f.function_pointer, 4) == 7  # type: ignore[arg-type]
    again = jit.compile_llvm_ir(ADD.format(k=3), "p1")
    assert again is f
    stats, cache = jit.get_stats(), jit.get_cache_stats()
    assert stats.successful_compilations == 1 and stats.average_compilation_time_ms > 0
    assert (cache.hits, cache.misses, cache.hit_rate) == (1, 1, 0.5)
    assert jit.get_cached_function("p1") is f and jit.list_cached_functions() == ["p1"]


def test_changed_ir_for_the_same_pattern_is_recompiled(jit: JitCompiler) -> None:
    first = jit.compile_llvm_ir(ADD.format(k=3), "p")
    second = jit.compile_llvm_ir(ADD.format(k=10), "p")
    assert first.cache_key != second.cache_key
    assert call(second.function_pointer, 1) == 11  # type: ignore[arg-type]


def test_lru_bound_and_clear(jit: JitCompiler) -> None:
    for k in range(5):
        jit.compile_llvm_ir(ADD.format(k=k), f"p{k}")
    assert jit.list_cached_functions() == ["p2", "p3", "p4"]
    assert jit.get_cache_stats().evictions == 2 and jit.get_cache_stats().size == 3
    jit.clear_cache()
    assert jit.list_cached_functions() == []


def test_disk_cache_serves_a_new_compiler(tmp_path: Path) -> None:
    config = JitConfig(work_dir=tmp_path / "w", cache_dir=tmp_path / "c")
    JitCompiler(config).compile_llvm_ir(ADD.format(k=1), "p")
    fresh = JitCompiler(config)
    f = fresh.compile_llvm_ir(ADD.format(k=1), "p")
    assert f.from_cache and fresh.get_stats().total_compilations == 0 and fresh.get_cache_stats().hits == 1


def test_invalid_ir_raises_with_tool_stderr_when_fallback_is_off(tmp_path: Path) -> None:
    jit = JitCompiler(JitConfig(work_dir=tmp_path / "w", cache_dir=tmp_path / "c", fallback_to_interpretation=False))
    with pytest.raises(StageFailed, match="llvm-as failed") as info:
        jit.compile_llvm_ir("define i64 @f(i64 %x) {\n  ret i32 %x\n}\n", "bad")
    assert "error:" in info.value.stderr
    with pytest.raises(InvalidIR):
        jit.compile_llvm_ir("", "empty")
    with pytest.raises(InvalidIR):
        jit.compile_llvm_ir("declare i64 @g(i64)\n", "nodef")
    assert jit.get_stats().failed_compilations == 1


def test_failed_compile_falls_back_with_a_warning(jit: JitCompiler) -> None:
    with pytest.warns(RuntimeWarning, match="falling back to interpretation"):
        f = jit.compile_llvm_ir("define i64 @f(i64 %x) {\n  ret i32 %x\n}\n", "bad")
    assert not f.is_native and jit.get_stats().fallbacks == 1


def test_a_batch_shares_one_library_and_relinks_on_change(tmp_path: Path) -> None:
    jit = JitCompiler(JitConfig(work_dir=tmp_path / "w", cache_dir=tmp_path / "c"))
    helper = ("@k = internal constant i64 {k}\n"
              "define i64 @helper(i64 %x) {{\n  %k = load i64, ptr @k\n  %r = mul i64 %x, %k\n  ret i64 %r\n}}\n"
              "define i64 @twice(i64 %x) {{\n  %r = call i64 @helper(i64 %x)\n  ret i64 %r\n}}\n")
    items = [(ADD.format(k=k), f"add{k}") for k in range(5)] + [(helper.format(k=k), f"mul{k}") for k in (2, 3)]
    batch = jit.compile_batch(items)
    assert len({f.native_code_path for f in batch}) == 1  # same-named functions, one library
    assert [call(f.function_pointer, 10) for f in batch] == [10, 11, 12, 13, 14, 20, 30]  # type: ignore[arg-type]
    assert jit.compile_llvm_ir(ADD.format(k=2), "add2") is batch[2]  # the batch fills the LRU
    changed = jit.compile_batch(items[:-1] + [(helper.format(k=7), "mul3")])
    assert call(changed[-1].function_pointer, 10) == 70  # type: ignore[arg-type]
    assert call(changed[0].function_pointer, 10) == 10  # type: ignore[arg-type]
    assert jit.get_stats().successful_compilations == 14


def test_a_batch_that_cannot_build_falls_back_to_one_at_a_time(tmp_path: Path) -> None:
    jit = JitCompiler(JitConfig(work_dir=tmp_path / "w", cache_dir=tmp_path / "c"))
    bad = "define i64 @f(i64 %x) {\n  ret i32 %x\n}\n"
    with pytest.warns(RuntimeWarning):
        functions = jit.compile_batch([(ADD.format(k=1), "good"), (bad, "bad")])
    assert call(functions[0].function_pointer, 1) == 2 and not functions[1].is_native  # type: ignore[arg-type]
