"""Review of farm_populate (an export's columns populated on the calling thread while farm_export writes them on the
big-stack thread) and of the client's background `farm server` (FARM_SERVER=auto): regression tests, and the bugs
found marked xfail (strict)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm import client, rendezvous, server
from farm.cache.engine import Engine
from farm.compiler.codegen.heap import POPULATE_LEAD
from farm.config import FarmConfig
from farm.lang.terms import ID_TYPECODE, TermGraph
from farm.lang.transduce import RuleSet
from farm.runtime import loader, mapped
from farm.runtime.loader import NativeRuleset

from .conftest import ruleset_of
from .test_runtime import LISTS, columns_of, fresh_arena, marked_export, rewrite_on
from .test_server import RULES, TERMS, Farm, _alive, _base_env, _children, _cmdline, _stop_all, _wait_until

# A list of 60,000 cells (v n t), each with its own literal and one shared subterm: 180,000 rows, 20 bytes each
# (3.6 MB of columns, 1 MiB or more: mapped), some of them literals, some shared.
PROGRAM = LISTS + "rule pr: (pair ?a ?b) => (pr2 ?b ?a)\n"
TERMS_BIG = "(mkk 60000 (pair 1 2)) (rev (mk 3)) (len (mk 5))"


@pytest.fixture(scope="module")
def natives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RuleSet, NativeRuleset]]:
    """The program loaded both ways: in memory (llvmlite's MCJIT) and as a shared library (what the CLI loads)."""
    engine = Engine(FarmConfig(cache_dir=tmp_path_factory.mktemp("review4-cache"), opt_level=1))
    rs = ruleset_of(PROGRAM)
    return {"jit": (rs, engine.load_in_memory(rs)), "so": (rs, engine.load(rs, "review4"))}


@pytest.mark.parametrize("how", ["jit", "so"])
@pytest.mark.parametrize("path", ["bounded", "exact"])
def test_columns_populated_alongside_are_the_marked_exports(natives: dict[str, tuple[RuleSet, NativeRuleset]],
                                                            how: str, path: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Through either loader, bounded or exact (farm_mark first) mapped columns exported while farm_populate runs
    alongside hold exactly what farm_mark + farm_export into arrays give; farm_populate got the caps meant
    (exact: the columns' rows and children; bounded: a third of the heap's words, below the bound).
    Fails if populate wrote or discarded pages (e.g. MADV_DONTNEED for MADV_POPULATE_WRITE), if the columns were
    sliced wrongly, or if the caps were the bound's (top // 2 rows, top children)."""
    rs, native = natives[how]
    if path == "exact":
        monkeypatch.setattr(mapped, "BOUNDED_MIN_BYTES", 1 << 60)
    calls: list[tuple[int, int, int]] = []
    populate = native.lib.farm_populate

    def counted(arena: Any, *args: Any) -> int:
        reached = int(populate(arena, *args))
        calls.append((args[-2], args[-1], reached))
        return reached

    tops: list[int] = []
    export = native.lib.farm_export

    def top_noted(arena: Any, *args: Any) -> int:
        tops.append(arena.contents.top)
        return int(export(arena, *args))

    monkeypatch.setattr(native.lib, "farm_populate", counted)
    monkeypatch.setattr(native.lib, "farm_export", top_noted)
    g = TermGraph(rs.make_signature())
    result = native.rewrite(g, g.parse(TERMS_BIG), max_memory=0)
    graph = result.graph
    assert all(isinstance(column, memoryview) for column in (graph.ops, graph.vals, graph.arities, graph.kid_ids))
    assert len(calls) == 1
    rows, children, reached = calls[0]
    assert reached >= POPULATE_LEAD
    columns, roots = marked_export(native, rs, TERMS_BIG)
    assert [list(c) for c in columns] == [list(c) for c in (graph.ops, graph.vals, graph.arities, graph.kid_ids)]
    assert result.outcomes == roots
    if path == "exact":
        assert (rows, children) == (len(columns[0]), len(columns[3]))
    else:
        assert rows == children == tops[0] // 3  # not the bound's top // 2 rows and top children
    assert graph.to_text(result.outcomes[1]) == "(cons (w 1) (cons (w 2) (cons (w 3) nil)))"  # type: ignore[arg-type]
    assert graph.to_text(result.outcomes[2]) == "5"  # type: ignore[arg-type]


def test_an_export_clears_exporting_and_the_arena_rewrites_again(
        natives: dict[str, tuple[RuleSet, NativeRuleset]]) -> None:
    """farm_export clears the arena's `exporting` (set by the caller before it): a farm_populate after it does
    nothing (returns its lead row at once), and a second farm_rewrite on the arena gives the normal forms a fresh
    arena gives. Fails if farm_export no longer stores 0 into `exporting` (farm_populate would then run to its
    caps, here 2**20 rows, far past these arrays)."""
    rs, native = natives["so"]
    with fresh_arena(native) as arena:
        g = TermGraph(rs.make_signature())
        out = array("q", rewrite_on(native, arena, columns_of(g), g.parse("(mkk 3000 (pair 1 2))")).out)
        sizes, roots = loader._zeros(2), loader._zeros(len(out))
        native.lib.farm_mark(arena, len(out), loader._ptr(out), loader._ptr(sizes))
        nodes, children = sizes
        columns = [loader._zeros(nodes, ID_TYPECODE), loader._zeros(nodes), loader._zeros(nodes, ID_TYPECODE),
                   loader._zeros(children, ID_TYPECODE)]
        arena.contents.exporting = 1
        assert native.lib.farm_export(arena, len(out), loader._ptr(out), loader._ptr(roots),
                                      *map(loader._ptr, columns)) == nodes
        assert arena.contents.exporting == 0
        # columns far too small for 2**20 rows: only a cleared `exporting` keeps farm_populate off them
        assert native.lib.farm_populate(arena, *map(loader._ptr, columns), 1 << 20, 1 << 20) == POPULATE_LEAD
        g2 = TermGraph(rs.make_signature())
        again = rewrite_on(native, arena, columns_of(g2), g2.parse("(len (mkk 3000 (pair 1 2))) (rev (mk 2))"))
        assert again.code == 0
    g3 = TermGraph(rs.make_signature())
    fresh = native.rewrite(g3, g3.parse("(len (mkk 3000 (pair 1 2))) (rev (mk 2))"))
    assert [fresh.graph.to_text(o) for o in fresh.outcomes] == ["3000", "(cons (w 1) (cons (w 2) nil))"]  # type: ignore


def _interrupted_collect(native: NativeRuleset, rs: RuleSet, monkeypatch: pytest.MonkeyPatch,
                         exc: BaseException) -> tuple[BaseException | None, bool]:
    """A large rewrite whose populate (the calling thread's part) raises `exc` while the export is still running
    (the export is held back 0.3 s). Whether the arena was freed only after the export had returned: the free is
    held until then so that a wrong order does not crash the test process."""
    exported = threading.Event()
    real_export, real_free = native.lib.farm_export, native.lib.farm_arena_free
    freed_after_export: list[bool] = []

    def slow_export(*args: Any) -> int:
        time.sleep(0.3)
        try:
            return int(real_export(*args))
        finally:
            exported.set()

    def raising_populate(*args: Any) -> int:
        raise exc

    def checked_free(arena: Any) -> None:
        freed_after_export.append(exported.is_set())
        exported.wait(10)  # never free an arena an export still walks
        real_free(arena)

    monkeypatch.setattr(native.lib, "farm_export", slow_export)
    monkeypatch.setattr(native.lib, "farm_populate", raising_populate)
    monkeypatch.setattr(native.lib, "farm_arena_free", checked_free)
    g = TermGraph(rs.make_signature())
    raised: BaseException | None = None
    try:
        native.rewrite(g, g.parse(TERMS_BIG), max_memory=0)
    except BaseException as caught:  # noqa: BLE001 (what the rewrite raised is the subject)
        raised = caught
    monkeypatch.undo()
    return raised, freed_after_export == [True]


def test_ctrl_c_while_populating_waits_for_the_export(natives: dict[str, tuple[RuleSet, NativeRuleset]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C on the calling thread during farm_populate: the KeyboardInterrupt is raised only once the export on
    the big stack has returned (the arena is freed after it), and the next rewrite is right. Fails if
    _BigStack.run re-raised without waiting for the job (done.get())."""
    rs, native = natives["so"]
    raised, in_order = _interrupted_collect(native, rs, monkeypatch, KeyboardInterrupt())
    assert isinstance(raised, KeyboardInterrupt) and in_order
    g = TermGraph(rs.make_signature())
    result = native.rewrite(g, g.parse("(len (mkk 70000 (pair 1 2)))"), max_memory=0)
    assert result.graph.to_text(result.outcomes[0]) == "70000"  # type: ignore[arg-type]


def test_another_exception_while_populating_waits_for_the_export(
        natives: dict[str, tuple[RuleSet, NativeRuleset]], monkeypatch: pytest.MonkeyPatch) -> None:
    rs, native = natives["so"]
    raised, in_order = _interrupted_collect(native, rs, monkeypatch, TimeoutError("SIGALRM"))
    assert isinstance(raised, TimeoutError)
    assert in_order, "the arena was freed while farm_export still ran on the big stack"


# ---- the client's background server (real processes and servers, as tests/test_server.py runs them)


@pytest.fixture(scope="module")
def server_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding arith's library (test_server's warm_cache)."""
    cache = tmp_path_factory.mktemp("review4-server-cache")
    env = {**_base_env(), "FARM_CACHE_DIR": str(cache), "FARM_SERVER": "off"}
    subprocess.run([sys.executable, "-m", "farm", "rewrite", RULES, TERMS], env=env, check=True, capture_output=True,
                   timeout=300)
    return cache


@pytest.fixture
def runner(server_cache: Path) -> Iterator[Farm]:
    """test_server's `farm`: its own socket directory, FARM_SERVER=manual; every server started stopped after."""
    runtime = Path(tempfile.mkdtemp(prefix="farm-r4-"))
    farm = Farm({**_base_env(), "FARM_CACHE_DIR": str(server_cache), "XDG_RUNTIME_DIR": str(runtime)}, [])
    try:
        yield farm
    finally:
        _stop_all(farm, runtime)
        shutil.rmtree(runtime, ignore_errors=True)


def _server_pid(runner: Farm) -> int:
    status = runner.status()
    assert status is not None
    runner.started.append(status["pid"])
    return int(status["pid"])


def test_a_pipeline_ends_with_farm_and_the_spawned_server_holds_nothing_of_the_client(
        runner: Farm) -> None:
    """`farm rewrite ... | cat` with FARM_SERVER unset and no server: the pipeline ends when farm does, though a
    server was started; that server holds no pipe or terminal of the client's (stdin /dev/null, its output to the
    log), runs in a session of its own in /, with the client's PATH and the cache directory made absolute. Fails if
    spawn let the server inherit the client's stdout or stderr (the pipeline's `cat` would wait for the server),
    dropped start_new_session, or passed a relative FARM_CACHE_DIR."""
    del runner.env["FARM_SERVER"]
    warm_cache = Path(runner.env["FARM_CACHE_DIR"])
    env = {**runner.env, "FARM_CACHE_DIR": warm_cache.name}  # relative to the client's directory
    started = time.monotonic()
    pipeline = subprocess.run(f"'{sys.executable}' -m farm rewrite '{RULES}' '{TERMS}' 2>&1 | cat", shell=True,
                              cwd=warm_cache.parent, env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)},
                              capture_output=True, text=True, timeout=60, check=False)
    assert pipeline.returncode == 0 and "(add x 6)" in pipeline.stdout, pipeline.stdout
    assert time.monotonic() - started < 30
    _wait_until(lambda: runner.status() is not None)
    pid = _server_pid(runner)
    fds = {name: os.readlink(f"/proc/{pid}/fd/{name}") for name in os.listdir(f"/proc/{pid}/fd")}
    assert fds["0"] == os.devnull and fds["1"] == fds["2"] == str(warm_cache / "server.log")
    # its only pipes are to its compile worker (farm.compiler.parallel.prestart_worker: on two cores or more)
    worker_pipes = set()
    if len(os.sched_getaffinity(0)) > 1:
        _wait_until(lambda: any(b"farm.compiler.parallel" in _cmdline(child) for child in _children(pid)))
        worker = next(child for child in _children(pid) if b"farm.compiler.parallel" in _cmdline(child))
        worker_pipes = {os.readlink(f"/proc/{worker}/fd/{name}") for name in os.listdir(f"/proc/{worker}/fd")}
    assert not any(target.startswith(("/dev/pts", "/dev/tty")) for target in fds.values()), fds
    assert {target for target in fds.values() if target.startswith("pipe:")} <= worker_pipes, fds
    assert os.getsid(pid) == pid and os.readlink(f"/proc/{pid}/cwd") == "/"
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if item)
    assert environ["FARM_CACHE_DIR"] == str(warm_cache) and environ["PATH"] == env["PATH"]


def test_a_served_command_starts_no_server(runner: Farm) -> None:
    """With a server listening (started with FARM_SERVER=auto in its environment): a command it serves starts
    none (neither the client nor the server itself). Fails if the server ran the client's entry
    (farm.client.main) for a request: a second server would start, log "a server already runs" and exit."""
    runner.start(FARM_SERVER="auto")
    log = Path(runner.env["FARM_CACHE_DIR"]) / "server.log"
    before = log.read_text().count("already runs")
    served = runner("rewrite", RULES, TERMS, FARM_SERVER="auto")
    assert served.returncode == 0 and "(add x 6)" in served.stdout
    time.sleep(2)  # a server started by mistake would have tried the lock by now
    assert log.read_text().count("already runs") == before
    status = runner.status()
    assert status is not None and status["requests"] == 1


@pytest.mark.parametrize("argv", [["targets", "--json"], ["rewrite", RULES, TERMS]])
def test_a_bad_farm_server_value_runs_nothing_and_starts_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path, argv: list[str]) -> None:
    """FARM_SERVER=of (a typo): exit 2 with one line, for a served command or not, before anything runs or
    starts. Fails if the value were checked only for served commands, or read as auto."""
    spawned: list[str] = []
    monkeypatch.setattr(server, "spawn", spawned.append)
    monkeypatch.setenv("FARM_SERVER", "of")
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["farm", *argv])
    assert client.main() == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("farm: error: FARM_SERVER is 'of'")
    assert spawned == []


def _code_copy(runner: Farm, tmp_path: Path) -> Path:
    code = tmp_path / "code"
    shutil.copytree(Path(__file__).parent.parent / "farm", code / "farm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    del runner.env["FARM_SERVER"]
    runner.env["PYTHONPATH"], runner.cwd = str(code), tmp_path
    return code / "farm"


def test_a_server_of_other_code_is_replaced_in_auto_mode(runner: Farm, tmp_path: Path) -> None:
    """FARM_SERVER unset: a server of older code (the same copy of farm, edited since) is told (STALE) and exits;
    the command runs here, and a new server of the current code starts and serves the next. Fails if STALE counted
    as a refusal (DECLINED), or if the new server lost the race for the lock to the old one's exit."""
    code = _code_copy(runner, tmp_path)
    old = runner.start(FARM_SERVER="manual")
    touched = code / "semantics" / "__init__.py"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # an edit
    assert runner("rewrite", RULES, TERMS).returncode == 0
    _wait_until(lambda: not _alive(old["pid"]))
    _wait_until(lambda: (status := runner.status()) is not None and status["pid"] != old["pid"])
    new = _server_pid(runner)
    assert runner("rewrite", RULES, TERMS).returncode == 0
    status = runner.status()
    assert status is not None and status["pid"] == new and status["requests"] == 1


def test_a_server_of_an_older_protocol_is_replaced_in_auto_mode(runner: Farm, tmp_path: Path) -> None:
    """The same as above for an upgrade that changes rendezvous.PROTOCOL: the server of the old code is the one
    there was "of other code", which exits and is replaced (722f79b's bump to 2 left it refusing every client)."""
    code = _code_copy(runner, tmp_path)
    rendezvous_py = code / "rendezvous.py"
    text = rendezvous_py.read_text()
    protocol = rendezvous.PROTOCOL
    assert f"\nPROTOCOL = {protocol} " in text
    rendezvous_py.write_text(text.replace(f"\nPROTOCOL = {protocol} ", f"\nPROTOCOL = {protocol - 1} ", 1))  # before
    old = runner.start(FARM_SERVER="manual")
    rendezvous_py.write_text(text)  # the upgrade, in place
    os.utime(rendezvous_py, ns=(rendezvous_py.stat().st_atime_ns, rendezvous_py.stat().st_mtime_ns + 10**9))
    done = runner("rewrite", RULES, TERMS)
    assert done.returncode == 0 and "(add x 6)" in done.stdout
    time.sleep(3)
    log = (Path(runner.env["FARM_CACHE_DIR"]) / "server.log").read_text()
    assert not _alive(old["pid"]), "the old server still runs: " + log.splitlines()[-1]
