"""Review of the changes since d967ed6: the madvise rule, the parallel tier-0 compile, the direct-only tier-0 lookup."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.cache.engine import Engine
from farm.compiler import parallel
from farm.compiler.codegen.llvm import ruleset_parts
from farm.config import FarmConfig
from farm.errors import PolicyViolation
from farm.runtime.verify import differential

from .conftest import EXAMPLES, check_ir, ruleset_of
from .test_faults import stored_but_unindexed
from .test_incremental import generated

DECLARE = "declare i32 @madvise(ptr, i64, i32)\n"


# ---- the madvise rule (farm/compiler/policy.py _check_madvise) ----

def test_madvise_as_a_personality_function_is_refused() -> None:
    """`personality ptr @madvise` mentions @madvise on a `define` line, which the rule skipped: the unwinder would
    call it with its own arguments (any advice), not a direct call with advice 23."""
    ir = DECLARE + "define void @f() personality ptr @madvise {\n  ret void\n}\n"
    with pytest.raises(PolicyViolation, match="madvise"):
        check_ir(ir)


def test_a_module_defining_madvise_that_uses_it_as_its_personality_is_refused() -> None:
    ir = ("define i32 @madvise(ptr %p, i64 %n, i32 %a) personality ptr @madvise {\n  ret i32 0\n}\n")
    with pytest.raises(PolicyViolation, match="madvise"):
        check_ir(ir)


@pytest.mark.parametrize("body", [
    # another advice
    "  %r = call i32 @madvise(ptr %p, i64 4096, i32 4)\n  ret void",
    # an advice LLVM folds from a constant expression still prints as a literal: only 23 passes
    "  %r = call i32 @madvise(ptr %p, i64 4096, i32 add (i32 2, i32 2))\n  ret void",
    # the advice a variable
    "  %a = add i32 20, 3\n  %r = call i32 @madvise(ptr %p, i64 4096, i32 %a)\n  ret void",
    # through a pointer in a local
    "  %s = alloca ptr\n  store ptr @madvise, ptr %s\n  %f = load ptr, ptr %s\n"
    "  %r = call i32 %f(ptr %p, i64 4096, i32 4)\n  ret void",
    # varargs-typed call, extra arguments
    "  %r = call i32 (ptr, i64, i32, ...) @madvise(ptr %p, i64 4096, i32 23, i32 4)\n  ret void",
    "  %r = call i32 @madvise(ptr %p, i64 4096, i32 23, i32 4)\n  ret void",
    # tail call forms, with operand bundles
    "  %r = musttail call i32 @madvise(ptr %p, i64 4096, i32 4)\n  ret void",
    # the address passed on
    "  %i = ptrtoint ptr @madvise to i64\n  ret void",
])
def test_madvise_other_than_a_direct_call_with_advice_23_is_refused(body: str) -> None:
    ir = DECLARE + f"define void @f(ptr %p) {{\n{body}\n}}\n"
    try:
        check_ir(ir)
    except PolicyViolation as exc:
        assert "madvise" in str(exc)
    except Exception as exc:  # noqa: BLE001 - LLVM refusing the text is fine too
        assert "parse" in str(exc), exc
    else:
        raise AssertionError("accepted")


def test_madvise_invoke_and_global_initialiser_are_refused() -> None:
    invoke = (DECLARE + "declare i32 @pers(...)\n"
              "define void @f(ptr %p) personality ptr @pers {\n"
              "  %r = invoke i32 @madvise(ptr %p, i64 4096, i32 4) to label %ok unwind label %bad\n"
              "ok:\n  ret void\nbad:\n  %lp = landingpad { ptr, i32 } cleanup\n  ret void\n}\n")
    with pytest.raises(PolicyViolation):
        check_ir(invoke, provided=frozenset({"pers"}))
    with pytest.raises(PolicyViolation, match="madvise"):
        check_ir(DECLARE + "@g = global ptr @madvise\n")
    with pytest.raises(PolicyViolation, match="madvise"):
        check_ir(DECLARE + "@g = global [2 x i64] [i64 0, i64 ptrtoint (ptr @madvise to i64)]\n")


def test_the_direct_call_with_advice_23_passes() -> None:
    check_ir(DECLARE + "define void @f(ptr %p, i64 %n) {\n  %r = call i32 @madvise(ptr %p, i64 %n, i32 23)\n"
             "  ret void\n}\n")


# ---- the parallel tier-0 compile (farm/compiler/parallel.py) ----

@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "cores", lambda: 2)


def _stop_workers() -> None:
    for worker in parallel._WORKERS:
        worker.process.kill()
        worker.process.wait()
    parallel._WORKERS.clear()


def _load_with_new_workers(cache_dir: Path, seed: int) -> None:
    """A 300-rule ruleset loaded in memory by workers started for it (stopped after), under the conditions the
    caller set up; its normal forms compared with the interpreter's."""
    _stop_workers()
    ruleset = generated(300)
    engine = Engine(FarmConfig(cache_dir=cache_dir, opt_level=0))
    try:
        native = engine.load_in_memory(ruleset)
    finally:
        _stop_workers()
    report = differential(ruleset, native, cases=50, seed=seed, fuel=10_000)
    assert report.ok, report.mismatches[:3]


@pytest.mark.usefixtures("two_cores")
def test_an_error_between_send_and_receive_leaves_no_stale_reply(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The first compile fails in this process after the workers got their requests; the next compile (of another
    ruleset) must not read the first one's replies."""
    first, second = generated(300), generated(320)
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    pipeline = parallel._pipeline

    def failing(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(parallel, "_pipeline", failing)
    with pytest.raises(KeyboardInterrupt):
        engine.load_in_memory(first)
    monkeypatch.setattr(parallel, "_pipeline", pipeline)
    report = differential(second, engine.load_in_memory(second), cases=100, seed=7, fuel=10_000)
    assert report.ok, report.mismatches[:3]
    assert all(w.alive() and not w.busy for w in parallel._WORKERS)


def test_the_switch_interval_is_restored_when_code_generation_fails() -> None:
    before = sys.getswitchinterval()

    def boom() -> tuple[str, str]:
        raise RuntimeError("codegen")

    with pytest.raises(RuntimeError):
        parallel._pipeline([boom], lambda module, name: b"")
    assert sys.getswitchinterval() == before


@pytest.mark.usefixtures("two_cores")
@pytest.mark.parametrize("executable", ["/bin/false", "/nonexistent/python3"])
def test_workers_that_cannot_start_fall_back_to_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             executable: str) -> None:
    _stop_workers()
    monkeypatch.setattr(sys, "executable", executable)
    _load_with_new_workers(tmp_path, seed=8)


# ---- the tiered engine's direct-only lookup (farm/cache/engine.py _load) ----

def test_a_library_stored_by_content_key_only_is_found_by_the_background_build(tmp_path: Path) -> None:
    ruleset = ruleset_of((EXAMPLES / "arith.farm").read_text(), "arith.farm")
    config = FarmConfig(cache_dir=tmp_path / "cache", opt_level=2)
    builder_engine = Engine(config)
    parts = ruleset_parts(ruleset, builder_engine.builder.target().triple)
    stored = builder_engine.builder.ensure_parts(parts, "arith")  # the content key only: no direct entry
    before = builder_engine.builder.index.counters()
    assert (before.get("misses"), before.get("hits", 0), before.get("compilations_ok")) == (1, 0, 1)

    engine = Engine(config)
    assert str(engine.load(ruleset, "arith").path) == "<in-memory>"  # tier 0 on the direct-key miss
    assert engine.wait_for_builds(timeout=300)
    library = engine.load(ruleset, "arith")
    assert library.path.suffix == ".so"
    assert engine.builder.index.lookup_direct(
        engine.builder.direct_key_for(ruleset, engine.builder.target(), 2)) == stored.meta.key
    counts = engine.builder.index.counters()
    assert (counts.get("misses"), counts.get("hits", 0), counts.get("compilations_ok")) == (1, 1, 1), counts
    # The next engine finds it by direct key at once
    assert Engine(config).load(ruleset, "arith").path.suffix == ".so"


# ---- counting a stored but unindexed library (farm/cache/builder.py _note_hit) ----

def test_a_library_fetched_from_a_shared_store_is_not_counted_as_compiled_here(tmp_path: Path) -> None:
    """_note_hit counted a compilation for any stored library its index did not know: a node with its own SQLite
    index and a shared S3 store counted every library another node built as compiled here, on its first hit."""
    from .servers import s3_server

    ruleset = ruleset_of((EXAMPLES / "arith.farm").read_text(), "arith.farm")
    with s3_server() as endpoint:
        def node(name: str) -> Engine:
            return Engine(FarmConfig(cache_dir=tmp_path / name, opt_level=0, s3_endpoint=endpoint,
                                     s3_bucket="farm-review", s3_access_key="testing",
                                     s3_secret_key="testing-secret", tiered=False))

        built = node("a").compile(ruleset, "arith")
        fetched = node("b")
        again = fetched.compile(ruleset, "arith")
        assert again.meta.key == built.meta.key and again.cached
        counts = fetched.builder.index.counters()
    assert counts.get("hits") == 1
    assert counts.get("compilations_ok", 0) == 0, counts  # node b compiled nothing


def test_two_finders_of_an_unindexed_library_count_its_compilation_once(tmp_path: Path) -> None:
    """_note_hit asked the index whether the library had an entry (meta), then counted its build (note_build): two
    transactions, so two processes finding the same stored but unindexed library at once both counted it."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from farm.cache.builder import ArtifactBuilder

    config = FarmConfig(cache_dir=tmp_path / "cache", opt_level=0, tiered=False)
    ruleset = ruleset_of("rule r: (f ?x) => (g ?x)\n")
    stored_but_unindexed(config, ruleset)

    both_looked = threading.Barrier(2, timeout=30)

    def then_wait(step: Callable[..., object]) -> Callable[..., object]:
        def in_step(*args: object) -> object:
            answer = step(*args)
            both_looked.wait()  # neither finder goes on before both have looked, as two processes can
            return answer

        return in_step

    finders = [ArtifactBuilder(config, count_requests=False) for _ in range(2)]
    for finder in finders:
        # How a finder learns whether the library is indexed: it asked the index (meta), now it indexes it if
        # new (note_build_if_new); either way both take that step before either goes on.
        for step in ("meta", "note_build_if_new"):
            setattr(finder.index, step, then_wait(getattr(finder.index, step)))
    with ThreadPoolExecutor(len(finders)) as pool:
        found = list(pool.map(lambda finder: finder.ensure_ruleset(ruleset, "p", "x86-64"), finders))
    assert all(artifact.cached for artifact in found)
    assert finders[0].index.counters()["compilations_ok"] == 1


@pytest.mark.usefixtures("two_cores")
def test_a_worker_imports_this_farm_not_one_in_the_working_directory(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m` puts the working directory first on sys.path: a `farm` package there (another checkout, a user's
    project of that name) was what the workers imported and ran, instead of the farm that started them."""
    elsewhere = tmp_path / "cwd"
    (elsewhere / "farm").mkdir(parents=True)
    marker = tmp_path / "imported"
    (elsewhere / "farm" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    monkeypatch.chdir(elsewhere)
    _load_with_new_workers(tmp_path / "cache", seed=9)
    assert not marker.exists()  # no worker imported the farm in its working directory


def test_an_import_only_an_internal_definition_provides_is_refused() -> None:
    """An `internal` (or private) function of another module is not visible to the linker: a module's import of that
    name resolved to whatever the process has under it (MCJIT looks unresolved symbols up in the process, and the
    in-memory path has no ELF check after it), e.g. libc's system, and the cross-module check let it through."""
    from farm.compiler.policy import defined_functions

    importer = ("declare i32 @system(ptr)\ndefine i32 @f(ptr %p) {\n  %r = call i32 @system(ptr %p)\n"
                "  ret i32 %r\n}\n")
    for linkage in ("internal", "private"):
        provider = f"define {linkage} i32 @system(ptr %p) {{\n  ret i32 0\n}}\n"
        assert "system" not in defined_functions(provider)
        with pytest.raises(PolicyViolation, match="@system"):
            check_ir(importer, provided=defined_functions(provider))
    check_ir(importer, provided=defined_functions("define i32 @system(ptr %p) {\n  ret i32 0\n}\n"))


@pytest.mark.usefixtures("two_cores")
def test_what_a_worker_prints_as_it_starts_is_not_read_as_a_reply(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Replies went out on the worker's stdout, where a sitecustomize's print lands before the worker runs: its
    bytes were read as a reply's length (a MemoryError here; a shorter print, gigabytes allocated and a wait for
    bytes that never come)."""
    import os

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('hello from sitecustomize')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    _load_with_new_workers(tmp_path / "cache", seed=10)


def test_a_process_forked_while_a_thread_compiles_can_compile(tmp_path: Path) -> None:
    """_WORKERS_LOCK held by a compiling thread at a fork stayed held forever in the child: its first in-memory
    load waited for a thread that does not exist there."""
    import os
    import signal

    ruleset = ruleset_of((EXAMPLES / "arith.farm").read_text(), "arith.farm")
    engine = Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=0))
    engine.load_in_memory(ruleset)  # LLVM initialised here, before the fork
    with parallel._WORKERS_LOCK:  # as a thread in the middle of compile_chunks holds it
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            signal.alarm(60)
            try:
                Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=0)).load_in_memory(ruleset)
            except BaseException:  # noqa: BLE001
                os._exit(1)
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
