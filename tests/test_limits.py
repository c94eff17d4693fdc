"""Resource limits: the memory cap of rewriting, stale build dirs, local single-flight compiles."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm import config
from farm.cache.backends import make_index
from farm.cache.engine import Engine, load_native
from farm.compiler.toolchain import build_dir_prefix, remove_stale_build_dirs
from farm.config import FarmConfig, default_max_memory
from farm.errors import ArenaOutOfMemory, ConfigError
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet
from farm.runtime.loader import NativeRuleset
from farm.semantics.interp import Interpreter
from farm.semantics.oracle import Oracle, from_graph

from .conftest import EXAMPLES, ROOT, ruleset_of

CAP = 64 << 20
NO_FUEL_LIMIT = 10**12  # the cap, not the fuel, must be what stops these
# Rulesets whose only rewrite sequence grows without end, each a different shape of growth.
GROWING = {
    "unary": ("op f/1, s/1, z/0\nrule grow: (f ?x) => (f (s ?x))\n", "(f z)"),
    "wide": ("op f/1, w/4, z/0\nrule grow: (f ?x) => (f (w ?x ?x z ?x))\n", "(f z)"),
    "literal": ("op f/1\nrule count: (f ?x) if const(?x) => (f {?x + 1})\n", "(f 0)"),
    "two rules": ("op f/1, g/1, s/1, z/0\nrule a: (f ?x) => (g (s ?x))\nrule b: (g ?x) => (f (s ?x))\n", "(f z)"),
}
# Compiled natively (each costs a build). Not "literal": the runtime's hash-consing is quadratic on long runs of
# consecutive literals (their hashes fill adjacent slots), which a memory cap does not change.
NATIVE_CASES = ("unary", "wide")


def _assert_names_cap(exc: ArenaOutOfMemory, cap: int) -> None:
    assert exc.cap == cap
    assert "FARM_MAX_MEMORY" in str(exc) and str(cap) in str(exc)


def _rewrite(engine: Interpreter | NativeRuleset, rules: RuleSet, term: str, cap: int) -> None:
    graph = TermGraph(rules.make_signature())
    engine.rewrite(graph, graph.parse(term), NO_FUEL_LIMIT, max_memory=cap)


# ---- configuration

@pytest.mark.parametrize(("text", "expected"), [("67108864", CAP), ("64M", CAP), ("64m", CAP), ("64MiB", CAP),
                                                 ("65536K", CAP), ("4G", 4 << 30), ("1T", 1 << 40), ("0", 0)])
def test_max_memory_sizes(text: str, expected: int) -> None:
    assert FarmConfig.from_env({"FARM_MAX_MEMORY": text}).max_memory == expected


@pytest.mark.parametrize("text", ["-1", "1.5G", "64X", "G", "lots", "64 M B", "0x40M"])
def test_bad_max_memory_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="FARM_MAX_MEMORY") as caught:
        FarmConfig.from_env({"FARM_MAX_MEMORY": text})
    assert repr(text) in str(caught.value) and "512M" in str(caught.value)


def test_default_cap_is_a_quarter_of_memory_and_under_the_address_space_limit(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < default_max_memory() <= physical // 4
    assert FarmConfig().max_memory == default_max_memory() == FarmConfig.from_env({}).max_memory
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1 << 30, resource.RLIM_INFINITY))
    assert default_max_memory.__wrapped__() == min(physical // 4, 1 << 29)  # type: ignore[attr-defined]
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    monkeypatch.setattr(config, "_CGROUP_LIMITS", (str(v2), str(v1)))
    v2.write_text("max\n")
    v1.write_text(f"{1 << 30}\n")  # a container of 1 GiB: a quarter of it, below half the address space
    assert default_max_memory.__wrapped__() == 1 << 28  # type: ignore[attr-defined]
    v1.write_text(f"{1 << 62}\n")  # v1's "no limit"
    assert default_max_memory.__wrapped__() == min(physical // 4, 1 << 29)  # type: ignore[attr-defined]


# ---- the memory cap, on every engine

@pytest.mark.parametrize("case", GROWING)
def test_interpreter_stops_at_the_cap(case: str) -> None:
    rules = ruleset_of(GROWING[case][0])
    with pytest.raises(ArenaOutOfMemory) as caught:
        _rewrite(Interpreter(rules), rules, GROWING[case][1], CAP)
    _assert_names_cap(caught.value, CAP)


@pytest.mark.parametrize("case", NATIVE_CASES)
@pytest.mark.parametrize("loading", ["library", "in-memory"])
def test_native_stops_at_the_cap(session_engine: Engine, case: str, loading: str) -> None:
    rules = ruleset_of(GROWING[case][0])
    native = (load_native(rules, session_engine.compile(rules, f"grow-{case}")) if loading == "library"
              else session_engine.load_in_memory(rules))
    for cap in (CAP, 16 << 20):
        with pytest.raises(ArenaOutOfMemory) as caught:
            _rewrite(native, rules, GROWING[case][1], cap)
        _assert_names_cap(caught.value, cap)
    graph = TermGraph(rules.make_signature())  # the arena of a refused rewrite is gone: the next one works
    normal = "z"
    assert native.rewrite(graph, graph.parse(normal), 5, max_memory=CAP).texts() == [normal]


@pytest.mark.parametrize("cap", [2**63, 2**64 + 1, 10**30])
def test_a_cap_beyond_the_arena_counter_is_no_cap(session_engine: Engine, cap: int) -> None:
    """FARM_MAX_MEMORY accepts any size; one past the arena's signed 64-bit counter is more memory than any
    machine has, so no cap. It once wrapped in the ctypes field: 2**63 became a negative cap (the first growth
    failed, ArenaOutOfMemory naming 8 EiB) and 2**64 + 1 a cap of one byte."""
    assert FarmConfig.from_env({"FARM_MAX_MEMORY": str(cap)}).max_memory == cap
    rules = ruleset_of(GROWING["unary"][0])
    native = load_native(rules, session_engine.compile(rules, "grow-unary"))
    graph = TermGraph(rules.make_signature())
    result = native.rewrite(graph, graph.parse(GROWING["unary"][1]), 200_000, max_memory=cap)
    assert "fuel" in str(result.outcomes[0]).lower(), result.outcomes[0]


# The oracle (farm verify) shares nothing: besides growing terms, re-normalising a shared normal form is
# exponential with no rule firing at all (2^60 nodes here), which fuel cannot stop.
ORACLE_CASES = {**GROWING, "shared rebuild": ("op it/2, f/2, s/1, z/0, a/0\nrule step: (it (s ?n) ?x) => "
                                              "(it ?n (f ?x ?x))\nrule end: (it z ?x) => ?x\n",
                                              "(it " + "(s " * 60 + "z" + ")" * 60 + " a)")}


@pytest.mark.parametrize("case", ORACLE_CASES)
def test_oracle_stops_at_the_cap(case: str) -> None:
    rules_text, text = ORACLE_CASES[case]
    rules = ruleset_of(rules_text)
    graph = TermGraph(rules.make_signature())
    term = from_graph(graph, graph.parse(text)[0])
    with pytest.raises(ArenaOutOfMemory) as caught:
        Oracle(rules, NO_FUEL_LIMIT, max_memory=64 << 10).normalize(term)  # it recurses: keep the term small
    _assert_names_cap(caught.value, 64 << 10)


def test_the_default_cap_does_not_change_results(session_engine: Engine) -> None:
    rules = ruleset_of((EXAMPLES / "arith.farm").read_text())
    native = session_engine.load_in_memory(rules)
    texts = (EXAMPLES / "arith.terms").read_text()
    outcomes = []
    for engine in (native, Interpreter(rules)):
        for cap in (None, 0):
            graph = TermGraph(rules.make_signature())
            outcomes.append(engine.rewrite(graph, graph.parse(texts), max_memory=cap).texts())
    assert all(o == outcomes[0] for o in outcomes) and len(outcomes[0]) > 3


RSS_PROBE = """
import json, resource, sys
from farm.cache.engine import Engine, load_native
from farm.errors import ArenaOutOfMemory
from farm.semantics.interp import Interpreter
from farm.lang.terms import TermGraph
from tests.conftest import ruleset_of
rules_text, term, loading, fuel = json.loads(sys.argv[1])
rules = ruleset_of(rules_text)
engine = Engine()
if loading == "interpreter":
    rewriter = Interpreter(rules)
elif loading == "library":
    rewriter = load_native(rules, engine.compile(rules, "grow"))
else:
    rewriter = engine.load_in_memory(rules)
graph = TermGraph(rules.make_signature())
roots = graph.parse(term)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    rewriter.rewrite(graph, roots, fuel)
    error = ""
except ArenaOutOfMemory as exc:
    error = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grown": (after - before) * 1024, "error": error}))
"""


def _guard_address_space() -> None:
    """Were the cap ignored, the probe fails on this limit instead of taking the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


@pytest.mark.parametrize("loading", ["interpreter", "library", "in-memory"])
def test_rss_stays_near_the_cap(tmp_path: Path, loading: str) -> None:
    """FARM_MAX_MEMORY from the environment, measured from outside the rewriter: the peak RSS a capped
    rewrite adds stays within the cap (plus slack for the allocator). Without the cap, 5 M steps of this
    rule take about 1 GB natively and well over that in the interpreter."""
    rules_text, term = GROWING["unary"]
    fuel = 5_000_000 if loading != "interpreter" else 1_000_000
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARM_CACHE_DIR": str(tmp_path / "cache"),
           "FARM_MAX_MEMORY": "64M", "FARM_OPT_LEVEL": "0"}
    probe = subprocess.run([sys.executable, "-c", RSS_PROBE, json.dumps([rules_text, term, loading, fuel])],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False,
                           preexec_fn=_guard_address_space)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.splitlines()[-1])
    assert "FARM_MAX_MEMORY=67108864" in report["error"]
    assert report["grown"] < CAP + (24 << 20), report


# ---- stale build dirs

def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _build_dir(work: Path, prefix: str) -> Path:
    path = work / f"{prefix}abcd_123"
    path.mkdir(parents=True)
    (path / "module.ll").write_text("partial")
    return path


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_host_names_stay_distinct_in_build_dir_names(a: str, b: str) -> None:
    """Two hosts sharing a work dir (NFS) never take each other's build dirs for their own: `a-b` and `a.b`
    were one name before."""
    from farm.compiler.toolchain import BUILD_DIR, _host

    assert (_host(a) == _host(b)) == (a == b)
    assert BUILD_DIR.fullmatch(f"build-{_host(a)}-123-abcdefgh")


@pytest.mark.parametrize("count", [1, 3])
def test_stale_build_dirs_are_removed_and_nothing_else(tmp_path: Path, count: int) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_text("keep me")
    host = build_dir_prefix().split("-")[1]
    stale = [_build_dir(work, f"build-{host}-{_dead_pid()}-") for _ in range(count)]
    dead = _dead_pid()
    kept = [
        _build_dir(work, build_dir_prefix()),  # this live process's
        _build_dir(work, f"build-{host}-{os.getppid()}-"),  # another live process's
        _build_dir(work, f"build-otherhost-{dead}-"),  # another host's: its pids mean nothing here
        _build_dir(work, "build-"),  # the old unowned naming: not known to be stale
        _build_dir(work, f"bUild-{host}-{dead}-"),
        _build_dir(work, f"build-{host}-{dead}-x"),
        _build_dir(work, f"build-{host}-99999999999999999999-"),  # no such pid can exist
    ]
    link = work / f"build-{host}-{dead}-abcd_124"
    link.symlink_to(outside, target_is_directory=True)
    plain = work / f"build-{host}-{dead}-abcd_125"
    plain.write_text("a file, not a build dir")
    removed = remove_stale_build_dirs(work)
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale)
    assert all((p / "module.ll").exists() for p in kept)
    assert link.is_symlink() and plain.is_file() and (outside / "canary").read_text() == "keep me"


def _farm(*args: str, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARM_CACHE_DIR": str(cache), "FARM_OPT_LEVEL": "0"}
    return subprocess.Popen([sys.executable, "-m", "farm.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def test_a_killed_compile_leaves_a_dir_the_next_compile_removes(tmp_path: Path) -> None:
    cache, rules = tmp_path / "cache", str(EXAMPLES / "arith.farm")
    work = cache / "work"
    victim = _farm("compile", rules, cache=cache)
    deadline = time.monotonic() + 120
    while not (work.exists() and any(work.iterdir())):
        assert victim.poll() is None and time.monotonic() < deadline, "the compile never made a build dir"
        time.sleep(0.005)
    os.killpg(victim.pid, signal.SIGKILL)  # the toolchain stage it runs too, so none writes into the dir later
    victim.communicate()
    left = list(work.iterdir())
    assert len(left) == 1 and left[0].name.startswith(f"build-{build_dir_prefix().split('-')[1]}-{victim.pid}-")
    survivor = _farm("compile", rules, cache=cache)
    _, stderr = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, stderr
    assert list(work.iterdir()) == []


# ---- single flight

def test_concurrent_compiles_build_once(tmp_path: Path) -> None:
    cache, rules = tmp_path / "cache", str(EXAMPLES / "arith.farm")
    procs = [_farm("compile", rules, cache=cache) for _ in range(4)]
    outputs = [p.communicate(timeout=300) for p in procs]
    failed = [f"exit {p.returncode}:\n{err}" for p, (_, err) in zip(procs, outputs) if p.returncode != 0]
    assert not failed, "\n".join(failed)  # each failure whole (a list's repr was cut to its first, good, entry)
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    artifact = Path(paths.pop())
    counters = make_index(FarmConfig(cache_dir=cache)).counters()
    assert counters["compilations_ok"] == 1
    assert counters["artifact_bytes_stored"] == artifact.stat().st_size
    assert (counters["requests"], counters["misses"], counters["hits"]) == (4, 1, 3)
    assert sum("built" in err for _, err in outputs) == 1
