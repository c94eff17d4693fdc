"""A large ruleset compiled in memory by worker processes and this one (farm/compiler/parallel.py): the same IR and
normal forms as one process makes, the load policy's decision across modules kept, workers that die replaced."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.cache.engine import Engine
from farm.compiler import parallel
from farm.compiler.codegen import llvm
from farm.compiler.policy import check_provided
from farm.config import FarmConfig
from farm.errors import PolicyViolation
from farm.lang.terms import TermGraph
from farm.runtime.verify import differential

from .test_incremental import generated

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker process beside this one, on any machine; none kept by an earlier test's prestart_worker."""
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    monkeypatch.setattr(parallel, "_keep_one", False)


def test_chunks_compiled_by_workers_rewrite_like_the_interpreter_and_keep_the_ir(tmp_path: Path) -> None:
    ruleset = generated(400)
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    target = engine.builder.target()
    assert len(llvm.LLVMCodegen(ruleset, target.triple).chunks()) >= parallel.MIN_CHUNKS
    native = engine.load_in_memory(ruleset)
    report = differential(ruleset, native, cases=300, seed=5, fuel=10_000)
    assert report.ok, report.mismatches[:3]
    # What the workers generated is what one process generates, for the library's build to key and compile
    assert llvm.ruleset_parts(ruleset, target.triple) == llvm.LLVMCodegen(ruleset, target.triple).parts()
    assert all(w.alive() and not w.busy for w in parallel._WORKERS)


def test_a_tiered_engine_builds_the_library_from_the_chunks_the_workers_made(tmp_path: Path) -> None:
    ruleset = generated(300)
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    first = engine.load(ruleset, "big")
    assert str(first.path) == "<in-memory>"
    engine.wait_for_builds()
    library = engine.load(ruleset, "big")
    assert library.path.suffix == ".so"
    graph = TermGraph(ruleset.make_signature())
    roots = graph.parse("(f0 (c1 c0) 5) (f3 (c2 1 c0) (c1 3))")
    a, b = first.rewrite(graph, roots, 10_000), library.rewrite(graph, roots, 10_000)
    assert [a.graph.to_text(x) for x in a.outcomes] == [b.graph.to_text(x) for x in b.outcomes]  # type: ignore[arg-type]


def test_a_worker_that_dies_has_its_share_compiled_here_and_is_replaced(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    ruleset = generated(300)
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    send = parallel._Worker.send
    died: list[int] = []

    def send_then_die(self: parallel._Worker, request: bytes, indices: list[int]) -> None:
        send(self, request, indices)
        self.process.kill()
        died.append(self.process.pid)

    monkeypatch.setattr(parallel._Worker, "send", send_then_die)
    with caplog.at_level(logging.WARNING, logger="farm.compiler.parallel"):
        native = engine.load_in_memory(ruleset)
    assert died and "compiling its chunks in this process" in caplog.text
    report = differential(ruleset, native, cases=100, seed=6, fuel=10_000)
    assert report.ok, report.mismatches[:3]
    monkeypatch.setattr(parallel._Worker, "send", send)
    other = generated(310)
    report = differential(other, engine.load_in_memory(other), cases=50, seed=7, fuel=10_000)
    assert report.ok, report.mismatches[:3]
    assert [w.process.pid for w in parallel._WORKERS] != died  # a new worker served the second load


def test_a_chunk_importing_what_no_module_defines_is_refused() -> None:
    check_provided(("farm_norm_op3",), frozenset({"farm_norm_op3"}), "chunk1")
    with pytest.raises(PolicyViolation, match="chunk1: declares the external function @system"):
        check_provided(("farm_norm_op3", "system"), frozenset({"farm_norm_op3"}), "chunk1")


def test_a_script_without_a_main_guard_compiles_in_parallel(tmp_path: Path) -> None:
    """Workers are not multiprocessing's: nothing runs the caller's script again."""
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from farm.compiler import parallel\n"
        "parallel.cores = lambda: 2\n"
        "from farm.cache.engine import Engine\n"
        "from farm.config import FarmConfig\n"
        "from tests.test_incremental import generated\n"
        "print('RAN')\n"
        f"Engine(FarmConfig(cache_dir={str(tmp_path / 'cache')!r}, opt_level=0)).load_in_memory(generated(300))\n"
        "print('LOADED', len(parallel._WORKERS))\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["RAN", "LOADED", "1"]


@pytest.mark.parametrize("opt_level", [0, 2])
def test_tier_0s_own_pieces_are_quick_at_o0_and_the_librarys_parts_never(tmp_path: Path, opt_level: int) -> None:
    """A small ruleset's pieces at -O0 (tier 0) are quick modules (irbuild.quick): C calls, each through the module's
    call table, tests instead of small switches, no alias tags or branch weights, the runtime's intern<n> and
    farm_fire. The library's parts, and a compile at -O1 and above, are not: GHC calls, direct, tagged."""
    ruleset = generated(40)
    target = Engine(FarmConfig(cache_dir=tmp_path)).builder.target()
    for name, text in llvm.ruleset_parts(ruleset, target.triple):
        if name != "runtime":
            assert "ghccc" in text and "!tbaa" in text and "@callees" not in text
    chunks, _ = parallel.compile_chunks(ruleset, target, opt_level, "small", lambda module, name: b"")
    quick = opt_level == 0
    for chunk in chunks[1:]:
        assert ("ghccc" in chunk.ir_text, "!tbaa" in chunk.ir_text) == (not quick, not quick)
        assert ('call i64 %' in chunk.ir_text, '@"farm_fire"' in chunk.ir_text) == (quick, quick)


def test_llvms_fast_instruction_selector_takes_a_quick_modules_code_in_the_jits_code_model(tmp_path: Path) -> None:
    """What quick modules are for: llc's -O0 instruction selection (FastISel) takes all their code in the large code
    model the JIT compiles for (farm/runtime/inmemory.py), but the one load of each function's call table address;
    every instruction it cannot take goes to the slow selector (SelectionDAG), one at a time. Fails with a direct
    call or a switch in a quick module: arith's pieces had 173 such fallbacks, and emitting them took 50% longer."""
    from farm.compiler.tools import find_tool

    ruleset = generated(40)
    target = Engine(FarmConfig(cache_dir=tmp_path)).builder.target()
    chunks, _ = parallel.compile_chunks(ruleset, target, 0, "large", lambda module, name: b"")
    assert len(chunks) > 2
    for chunk in chunks:
        source = tmp_path / f"{chunk.name}.ll"
        source.write_text(chunk.ir_text)
        run = subprocess.run([find_tool("llc"), "-O0", "-code-model=large", "-relocation-model=static",
                              "-pass-remarks-missed=sdagisel", "-filetype=obj", str(source), "-o", "/dev/null"],
                             capture_output=True, text=True, timeout=120, check=True)
        missed = [line for line in run.stderr.splitlines() if "FastISel missed" in line]
        allowed = [line for line in missed if "ptr @callees, i64 0" in line or "function: farm_fingerprint" in line]
        assert missed == allowed, missed
        assert len(allowed) <= chunk.ir_text.count("\ndefine ")


def test_a_small_ruleset_shares_its_chunks_only_with_a_worker_that_has_started_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tier 0 of a small ruleset (not the library's layout) starts no worker: one costs more than the compile. With
    one started up beforehand (prestart_worker, as a farm server does), it sends it a share of its pieces, which
    the worker cuts and compiles as this process would: the code rewrites as the interpreter does."""
    monkeypatch.setattr(parallel, "_WORKERS", [])
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    first = generated(40)
    report = differential(first, engine.load_in_memory(first), cases=100, seed=8, fuel=10_000)
    assert report.ok and parallel._WORKERS == []
    shares: list[list[int]] = []
    send = parallel._Worker.send
    monkeypatch.setattr(parallel._Worker, "send",
                        lambda self, request, indices: (shares.append(indices), send(self, request, indices))[1])
    try:
        parallel.prestart_worker()
        deadline = time.monotonic() + 120
        while not parallel._ready_workers(1):
            assert time.monotonic() < deadline, "the worker never started up"
            time.sleep(0.02)
        second = generated(41)
        pieces = llvm.LLVMCodegen(second, engine.builder.target().triple).chunks(
            max(8, -(-len(second.rules) // parallel.TIER0_PIECES)))
        report = differential(second, engine.load_in_memory(second), cases=100, seed=9, fuel=10_000)
        assert report.ok, report.mismatches[:3]
        assert len(shares) == 1 and 0 < len(shares[0]) < len(pieces)
    finally:
        for worker in parallel._WORKERS:
            assert worker.process.stdin is not None
            worker.process.stdin.close()  # it exits when its stdin closes
            worker.process.wait(timeout=60)


def test_the_worker_gets_the_share_it_finishes_sooner() -> None:
    """Largest chunk first, to the side that would finish it sooner, the worker's rules costing WORKER_COST and
    this process starting with the manifest's MANIFEST_RULES; every chunk in one share, each in chunk order."""
    sizes = [8, 6, 12, 11, 9]
    mine, theirs = parallel._shared_with_a_worker(sizes)
    assert sorted(mine + theirs) == list(range(len(sizes))) and mine == sorted(mine) and theirs == sorted(theirs)
    load = [parallel.MANIFEST_RULES + sum(sizes[i] for i in mine), parallel.WORKER_COST * sum(sizes[i] for i in theirs)]
    assert abs(load[0] - load[1]) <= max(sizes)
    assert parallel._shared_with_a_worker([5]) in ([[0], []], [[], [0]])
