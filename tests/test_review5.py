"""Review of bb99e0e: tier 0 shares a small ruleset's pieces with a compile worker that has started up
(farm/compiler/parallel.py: prestart_worker, _ready_workers, the empty startup frame, the (pieces, quick)
request fields); a farm server keeps one. Real worker processes throughout; every one started is stopped."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.cache.engine import Engine
from farm.compiler import parallel
from farm.compiler.codegen import llvm
from farm.compiler.policy import parse_ir
from farm.compiler.toolchain import emit_module
from farm.config import FarmConfig
from farm.runtime.inmemory import JIT_CODE
from farm.runtime.verify import differential

from .test_incremental import generated
from .test_server import Farm, _base_env, _children, _cmdline, _stop_all, _wait_until

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0  # seconds a worker has to import farm and LLVM


@pytest.fixture(autouse=True)
def workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[parallel._Worker]]:
    """Two cores on any machine, no worker of another test's, and every worker started here stopped."""
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    started: list[parallel._Worker] = []
    init = parallel._Worker.__init__

    def tracked(self: parallel._Worker) -> None:
        init(self)
        started.append(self)

    monkeypatch.setattr(parallel._Worker, "__init__", tracked)
    monkeypatch.setattr(parallel, "_WORKERS", [])
    monkeypatch.setattr(parallel, "_keep_one", False)  # prestart_worker's flag: this test's only
    try:
        yield started
    finally:
        for worker in started:
            _stop(worker)


def _stop(worker: parallel._Worker) -> None:
    assert worker.process.stdin is not None
    with contextlib.suppress(OSError):
        worker.process.stdin.close()  # it exits when its stdin closes
    try:
        worker.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait()
    worker.replies.close()


def _ready_worker() -> parallel._Worker:
    """A worker prestarted, as a farm server does, and waited for until it has started up."""
    parallel.prestart_worker()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not (ready := parallel._ready_workers(1)):
        assert time.monotonic() < deadline, "the worker never started up"
        time.sleep(0.02)
    return ready[0]


def _record_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[int]]]:
    """(worker pid, chunk indices) of every share sent to a worker."""
    sends: list[tuple[int, list[int]]] = []
    send = parallel._Worker.send

    def recording(self: parallel._Worker, request: bytes, indices: list[int]) -> None:
        sends.append((self.process.pid, list(indices)))
        send(self, request, indices)

    monkeypatch.setattr(parallel._Worker, "send", recording)
    return sends


def _check(engine: Engine, n: int, seed: int) -> None:
    ruleset = generated(n)
    report = differential(ruleset, engine.load_in_memory(ruleset), cases=80, seed=seed, fuel=10_000)
    assert report.ok, report.mismatches[:3]


# ---- what works: each would fail on the change named in its docstring ----

@pytest.mark.parametrize("opt_level", [0, 2])
def test_a_workers_pieces_are_this_processs_cut_convention_level_and_code_model(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                                 opt_level: int) -> None:
    """Every chunk a ready worker compiled for a small ruleset is, IR and object code, what this process makes of
    the same piece: the same cut (pieces), calling convention (C at -O0, GHC above), -O level and code model.
    Fails if the worker ignored the request's pieces or quick flag (the IR differs), or compiled at another
    -O level, code model or target (the object code differs)."""
    worker = _ready_worker()
    sends = _record_sends(monkeypatch)
    target = Engine(FarmConfig(cache_dir=tmp_path)).builder.target()
    ruleset = generated(64)
    chunks, _ = parallel.compile_chunks(ruleset, target, opt_level, JIT_CODE,
                                        lambda module, name: emit_module(module, target, opt_level, JIT_CODE)[0])
    assert len(sends) == 1 and sends[0][0] == worker.process.pid
    theirs = {f"chunk{i}" for i in sends[0][1]}
    assert theirs and theirs < {chunk.name for chunk in chunks}
    codegen = llvm.LLVMCodegen(ruleset, target.triple, quick=opt_level == 0)
    pieces = codegen.chunks(max(8, -(-len(ruleset.rules) // parallel.TIER0_PIECES)))
    for chunk in chunks[1:]:
        index = int(chunk.name.removeprefix("chunk"))
        assert chunk.ir_text == codegen.chunk_part(index, pieces[index])[1], chunk.name
        assert ("ghccc" in chunk.ir_text) == (opt_level > 0), chunk.name
        local = emit_module(parse_ir(chunk.ir_text, chunk.name), target, opt_level, JIT_CODE)[0]
        assert chunk.object_code == local, f"{chunk.name} ({'worker' if chunk.name in theirs else 'here'})"


def test_one_worker_serves_small_large_and_small_rulesets_in_turn(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A prestarted worker (startup frame read by ready()) serves a small ruleset, then a large one's library
    layout, then a small one again; a worker a large ruleset started (its startup frame read by receive(), never by
    ready()) then serves a small one. Fails if the startup frame were read twice or never (a reply misread: an
    EOFError, a CompileWorkerLost and a different pid, or wrong code), or if a large compile's worker did not count
    as ready."""
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    worker = _ready_worker()
    sends = _record_sends(monkeypatch)
    for n, seed in ((41, 1), (200, 2), (45, 3)):
        _check(engine, n, seed)
    assert [pid for pid, _ in sends] == [worker.process.pid] * 3 and worker.alive() and not worker.busy
    _stop(worker)
    monkeypatch.setattr(parallel, "_WORKERS", [])
    sends.clear()
    _check(engine, 210, 4)  # starts a worker, which has not started up when its share is sent
    _check(engine, 47, 5)
    assert len(sends) == 2 and sends[0][0] == sends[1][0] != worker.process.pid


@pytest.mark.parametrize("when", ["starting up", "starting up, unseen", "started up", "busy"])
def test_a_worker_that_dies_costs_nothing_but_its_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        when: str) -> None:
    """A prestarted worker killed while it starts up, after, or once sent a share: the small ruleset's compile
    neither fails nor hangs, and its code is right. Fails if ready() let a startup EOF escape (CompileWorkerLost out
    of compile_chunks), if a dead worker were sent a share, or if a lost share were not compiled here."""
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    sends = _record_sends(monkeypatch)
    if when.startswith("starting up"):
        parallel.prestart_worker()
        worker = parallel._WORKERS[0]
        worker.process.kill()
        if when.endswith("unseen"):
            monkeypatch.setattr(parallel._Worker, "alive", lambda self: True)
    else:
        worker = _ready_worker()
        if when == "started up":
            worker.process.kill()
        else:
            send = parallel._Worker.send

            def send_then_die(self: parallel._Worker, request: bytes, indices: list[int]) -> None:
                send(self, request, indices)
                self.process.kill()

            monkeypatch.setattr(parallel._Worker, "send", send_then_die)
    if when != "busy":
        worker.process.wait()
    start = time.monotonic()
    _check(engine, 41, 6)
    assert time.monotonic() - start < 30
    assert len(sends) == (0 if when != "busy" else 1)


def test_on_one_core_no_worker_is_started_nor_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   workers: list[parallel._Worker]) -> None:
    """cores() == 1: prestart_worker starts nothing, and a worker left from before is not sent a share. Fails if
    either `cores() > 1` test were dropped."""
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    parallel.prestart_worker()
    assert workers == []
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    _ready_worker()
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    sends = _record_sends(monkeypatch)
    _check(engine, 41, 7)
    assert sends == []


def test_two_threads_share_one_ready_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads load small rulesets at once beside one ready worker: one request at a time on its pipe, both
    right. Fails if the small path used the worker outside _WORKERS_LOCK (two requests interleaved on the pipe)."""
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    worker = _ready_worker()
    sends = _record_sends(monkeypatch)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for k in range(3):
                _check(engine, n + k, n + k)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in (33, 50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung on the worker's pipe"
    assert not errors, errors
    assert len(sends) == 6 and {pid for pid, _ in sends} == {worker.process.pid} and not worker.busy


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_use_its_parents_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked beside a ready worker compiles on its own (the worker is its parent's), and the parent's
    worker still serves the parent. Fails if _ready_workers took the parent's worker in the child (the child
    would send it a share: its exit code 3), or spoilt it for the parent."""
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    worker = _ready_worker()
    sends = _record_sends(monkeypatch)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's code
        code = 4
        try:  # compiled only: a native rewrite in a forked child hangs, whatever this change (loader._BigStack)
            engine.load_in_memory(generated(43))
            code = 0 if not sends else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's compile hung")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    _check(engine, 44, 9)
    assert [p for p, _ in sends] == [worker.process.pid]


# ---- worker processes that outlive what started them ----

PRESTART_THEN_EXIT = """
import sys, time
from farm.compiler import parallel
parallel.cores = lambda: 2
parallel.prestart_worker()
worker = parallel._WORKERS[0]
print(worker.process.pid, flush=True)
if sys.argv[1] == "after":
    deadline = time.monotonic() + 60
    while not worker.ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.ready()
"""


@pytest.mark.parametrize("exit_when", [
    "after",
    "at once"])
def test_a_prestarted_worker_exits_quietly_with_the_process_that_started_it(tmp_path: Path, exit_when: str) -> None:
    """A process that prestarts a worker and exits, after the worker started up or at once: the worker exits too
    (its stdin closes), printing nothing. `after` fails if the worker outlived its parent (run() waits for the
    stderr the worker holds; the pid check); `at once` fails if the worker's startup frame to a closed pipe raises
    (a BrokenPipeError traceback on the stderr it shares: the terminal, server.log)."""
    script = tmp_path / "script.py"
    script.write_text(PRESTART_THEN_EXIT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(script), exit_when], capture_output=True, text=True, timeout=60,
                         env=env, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    pid = int(run.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _running(pid):
        assert time.monotonic() < deadline, "the worker outlived its parent"
        time.sleep(0.05)
    assert "Traceback" not in run.stderr and "Error" not in run.stderr, run.stderr[-2000:]


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---- bugs ----

def test_a_ready_worker_whose_pipe_is_descriptor_1024_or_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process with many files open (a server with many clients, a raised RLIMIT_NOFILE) starts a worker whose
    reply pipe is descriptor 1024 or above. Today: ValueError 'filedescriptor out of range in select()' out of
    Engine.load_in_memory. Passes once ready() polls with select.poll (or selectors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("RLIMIT_NOFILE too low to open 1100 files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200) if hard == resource.RLIM_INFINITY
                                               else min(max(soft, 1200), hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        parallel.prestart_worker()
        worker = parallel._WORKERS[0]
        assert worker.replies.fileno() >= 1024
        poller = select.poll()
        poller.register(worker.replies.fileno(), select.POLLIN)
        assert poller.poll(STARTUP_TIMEOUT * 1000), "the worker never started up"
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    sends = _record_sends(monkeypatch)
    _check(Engine(FarmConfig(cache_dir=tmp_path, opt_level=0)), 41, 10)
    assert [pid for pid, _ in sends] == [worker.process.pid]


def test_a_dead_workers_pipes_are_closed_not_left_to_the_collector(tmp_path: Path,
                                                                   workers: list[parallel._Worker]) -> None:
    """The prestarted worker dies (killed: the OOM killer, or stop_if_busy after an error); the next small
    compile drops it. Today it warns 'unclosed file <_io.BufferedWriter ...>' and '<_io.BufferedReader ...>'
    (`farm rewrite` records warnings with simplefilter("always") and shows them: seen through a server)."""
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    worker = _ready_worker()
    worker.process.kill()
    worker.process.wait()
    workers.remove(worker)  # dead: nothing to stop; no reference left but _WORKERS'
    del worker
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check(engine, 41, 11)
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a server keeps a compile worker on two cores or more")
def test_a_server_replaces_its_compile_worker_when_it_dies(tmp_path: Path) -> None:
    """The README: 'On two cores or more it keeps one compile worker process'. Kill it, run a rewrite of a new
    ruleset through the server: a worker is running again soon after (today: none, ever)."""
    cache, runtime = tmp_path / "cache", Path(tempfile.mkdtemp(prefix="farm-r5-"))
    runner = Farm({**_base_env(), "FARM_CACHE_DIR": str(cache), "XDG_RUNTIME_DIR": str(runtime)}, [])
    try:
        server = runner.start()["pid"]

        def compile_workers() -> list[int]:
            return [pid for pid in _children(server) if b"farm.compiler.parallel" in _cmdline(pid)]

        _wait_until(lambda: len(compile_workers()) == 1)
        os.kill(compile_workers()[0], signal.SIGKILL)
        _wait_until(lambda: not compile_workers())
        rules = tmp_path / "r.farm"
        rules.write_text((ROOT / "examples/arith.farm").read_text() + "\nop zz/1\nrule zz: (zz ?x) => ?x\n")
        done = runner("rewrite", str(rules), str(ROOT / "examples/arith.terms"))
        assert done.returncode == 0, done.stderr
        _wait_until(lambda: len(compile_workers()) == 1, timeout=8)
    finally:
        _stop_all(runner, runtime)
        subprocess.run(["rm", "-rf", str(runtime)], check=False)
