"""`farm server` and the `farm` command's thin client, end to end: real servers started with the CLI, real client
processes, each output compared with the same command run without a server (FARM_SERVER=off)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm import locations
from farm.cache.engine import HeldEngines
from farm.config import FarmConfig

from .conftest import EXAMPLES, ROOT, ruleset_of

RULES, TERMS = str(EXAMPLES / "arith.farm"), str(EXAMPLES / "arith.terms")


@dataclass
class Farm:
    """Runs `farm` as a user does, in one environment: its own socket directory (XDG_RUNTIME_DIR), cache and code."""

    env: dict[str, str]
    started: list[int]  # pids of the servers started, stopped at the end whatever happens
    cwd: Path = ROOT  # `python -m farm` imports the farm of its directory first

    def __call__(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm", *args], capture_output=True, text=True,
                              cwd=cwd or self.cwd, env={**self.env, **env}, timeout=300, check=False)

    def start(self, *options: str, **env: str) -> dict[str, Any]:
        started = self("server", "start", *options, **env)
        assert started.returncode == 0, started.stderr
        status = self.status(**env)
        assert status is not None, started.stderr
        self.started.append(status["pid"])
        return status

    def status(self, **env: str) -> dict[str, Any] | None:
        shown = self("server", "status", "--json", **env)
        document = json.loads(shown.stdout)
        assert shown.returncode == (0 if document["running"] else 1)
        return document if document["running"] else None

    def local(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self(*args, FARM_SERVER="off", **env)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding arith's library, so that every case's first rewrite is a warm one."""
    cache = tmp_path_factory.mktemp("server-cache")
    env = {**_base_env(), "FARM_CACHE_DIR": str(cache), "FARM_SERVER": "off"}
    subprocess.run([sys.executable, "-m", "farm", "rewrite", RULES, TERMS], env=env, check=True, capture_output=True,
                   timeout=300)
    return cache


def _base_env() -> dict[str, str]:
    """No FARM_* variable but FARM_SERVER=manual: a server is used, and started only by a case that says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return {**env, "PYTHONPATH": str(ROOT), "FARM_SERVER": "manual"}


@pytest.fixture
def farm(warm_cache: Path) -> Iterator[Farm]:
    # A short directory of its own: a Unix socket's path is at most 107 bytes, and pytest's tmp_path is long.
    runtime = Path(tempfile.mkdtemp(prefix="farm-test-"))
    runner = Farm({**_base_env(), "FARM_CACHE_DIR": str(warm_cache), "XDG_RUNTIME_DIR": str(runtime)}, [])
    try:
        yield runner
    finally:
        _stop_all(runner, runtime)
        shutil.rmtree(runtime, ignore_errors=True)


def _stop_all(runner: Farm, runtime: Path) -> None:
    """Stop each server a case started: politely, then by its pid, which its lock file holds (a server that never
    answered included)."""
    if runner.started and _alive(runner.started[-1]):
        runner("server", "stop")
    locks = (runtime / "farm").glob("*.lock")
    for pid in {*runner.started, *(int(text) for lock in locks if (text := lock.read_text().strip()))}:
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            if time.monotonic() > deadline - 5:
                os.kill(pid, signal.SIGTERM)
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie of ours is reaped: the servers are not our children, start detaches)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _same(remote: subprocess.CompletedProcess[str], local: subprocess.CompletedProcess[str]) -> None:
    """The same stdout, stderr (times aside) and exit code."""
    times = re.compile(r"\d+\.\d+ ms")
    assert (remote.returncode, remote.stdout, times.sub("T", remote.stderr)) == \
        (local.returncode, local.stdout, times.sub("T", local.stderr))


def _served(farm: Farm, before: int, **env: str) -> int:
    status = farm.status(**env)
    assert status is not None
    return int(status["requests"]) - before


def test_a_warm_rewrite_is_served_with_the_output_of_a_local_run(farm: Farm) -> None:
    farm.start()
    remote, local = farm("rewrite", RULES, TERMS), farm.local("rewrite", RULES, TERMS)
    assert remote.returncode == 0 and "(add x 6)" in remote.stdout, remote.stderr
    _same(remote, local)
    again = farm("rewrite", RULES, TERMS, "--stats")
    _same(again, farm.local("rewrite", RULES, TERMS, "--stats"))
    assert _served(farm, 0) == 2
    libraries = farm.status()["libraries"]  # type: ignore[index]
    assert len(libraries) == 1 and libraries[0]["path"].endswith(".so")  # loaded once, held across requests


@pytest.mark.parametrize("broken", ["rules", "terms"])
def test_a_bad_input_file_is_reported_as_a_local_run_reports_it(farm: Farm, tmp_path: Path, broken: str) -> None:
    bad = tmp_path / f"bad.{broken}"
    bad.write_text("rule ok: (add ?x 0) => ?x\nrule bad: (add ?x\n" if broken == "rules" else "(add x 0)\n(add x\n")
    args = ("rewrite", str(bad), TERMS) if broken == "rules" else ("rewrite", RULES, str(bad))
    farm.start()
    remote, local = farm(*args), farm.local(*args)
    errors = [line for line in remote.stderr.splitlines() if line.startswith("farm: error:")]
    assert remote.returncode == 2 and len(errors) == 1 and f"{bad}:2:" in errors[0]
    _same(remote, local)
    assert _served(farm, 0) == 1


def test_terminals_get_what_a_local_run_writes_to_a_terminal(farm: Farm) -> None:
    farm.start()
    args = ("rewrite", RULES, TERMS, "--stats")  # a rich table: colours and width are the terminal's
    remote, local = _on_terminal(farm, *args), _on_terminal(farm, *args, FARM_SERVER="off")
    times = re.compile(rb"\d+\.\d+ ms")
    assert b"\x1b[" in remote and times.sub(b"T", remote) == times.sub(b"T", local)
    assert _served(farm, 0) == 1


def _on_terminal(farm: Farm, *args: str, **env: str) -> bytes:
    """What a command writes to a terminal (stdout and stderr both), 100 columns wide."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: run the command on the terminal
        os.chdir(farm.cwd)
        os.execve(sys.executable, [sys.executable, "-m", "farm", *args], {**farm.env, "COLUMNS": "100", **env})
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.waitpid(pid, 0)
    os.close(fd)
    return b"".join(chunks)


def test_a_library_cleared_from_the_cache_is_built_again_as_a_local_run_would(farm: Farm, tmp_path: Path) -> None:
    farm.env["FARM_CACHE_DIR"] = str(tmp_path / "cache")  # a cache of its own, cleared below
    assert farm.local("rewrite", RULES, TERMS).returncode == 0
    farm.start()
    assert farm("rewrite", RULES, TERMS).returncode == 0 and _served(farm, 0) == 1  # the server holds the library
    results = []
    for env in ({}, {"FARM_SERVER": "off"}):
        assert farm("cache", "clear").returncode == 0
        results.append(farm("rewrite", RULES, TERMS, **env))
    assert "storing the compiled library" in results[0].stderr
    _same(*results)
    assert _served(farm, 0) == 2


def test_relative_paths_are_the_clients(farm: Farm, tmp_path: Path) -> None:
    shutil.copy(RULES, tmp_path / "r.farm")
    shutil.copy(TERMS, tmp_path / "t.terms")
    farm.start()
    remote = farm("rewrite", "r.farm", "t.terms", cwd=tmp_path)  # the server's own directory is /
    _same(remote, farm.local("rewrite", "r.farm", "t.terms", cwd=tmp_path))
    assert remote.returncode == 0 and _served(farm, 0) == 1


def test_a_relative_cache_directory_is_the_clients(farm: Farm, tmp_path: Path) -> None:
    farm.env["FARM_CACHE_DIR"], farm.cwd = "cache", tmp_path  # tmp_path/cache, while the server runs in /
    farm.start()
    assert farm.local("rewrite", RULES, TERMS).returncode == 0  # the library built under tmp_path/cache: hits next
    _same(farm("rewrite", RULES, TERMS), farm.local("rewrite", RULES, TERMS))
    status = farm.status()
    assert status is not None and status["requests"] == 1 and status["cache_dir"] == str(tmp_path / "cache")
    assert (tmp_path / "cache" / "server.log").exists()


def test_the_clients_farm_variables_are_honoured(farm: Farm, tmp_path: Path) -> None:
    farm.start()
    other_cache = tmp_path / "other-cache"
    elsewhere = farm("rewrite", RULES, TERMS, FARM_CACHE_DIR=str(other_cache))  # another cache: no server for it
    assert elsewhere.returncode == 0 and other_cache.is_dir()
    assert _served(farm, 0) == 0
    assert farm.local("rewrite", RULES, TERMS, FARM_OPT_LEVEL="1").returncode == 0  # its library built
    opt1 = farm("rewrite", RULES, TERMS, FARM_OPT_LEVEL="1")  # the same server, another configuration
    _same(opt1, farm.local("rewrite", RULES, TERMS, FARM_OPT_LEVEL="1"))
    assert farm("rewrite", RULES, TERMS).returncode == 0  # the variable was the request's only: -O2 again
    status = farm.status()
    assert status is not None and status["requests"] == 2
    assert [library["opt_level"] for library in status["libraries"]] == [1, 2]


def test_farm_server_off_and_stdin_are_never_served(farm: Farm) -> None:
    farm.start()
    assert farm.local("rewrite", RULES, TERMS).returncode == 0
    _same(farm("rewrite", RULES, "-"), farm.local("rewrite", RULES, "-"))  # `-` may come to mean stdin some day
    assert _served(farm, 0) == 0


def test_without_a_server_the_command_runs_locally(farm: Farm) -> None:
    assert farm.status() is None
    _same(farm("rewrite", RULES, TERMS), farm.local("rewrite", RULES, TERMS))
    assert not (Path(farm.env["XDG_RUNTIME_DIR"]) / "farm").exists()  # made by a server only
    stopped = farm("server", "stop")
    assert stopped.returncode == 0 and "no farm server is running" in stopped.stderr


def test_a_command_run_for_want_of_a_server_starts_one_for_the_next(farm: Farm) -> None:
    """FARM_SERVER unset (auto): a rewrite with no server runs here, exactly as a local run, and starts a server
    in the background, which serves the next one."""
    del farm.env["FARM_SERVER"]
    assert farm.status() is None
    _same(farm("rewrite", RULES, TERMS), farm.local("rewrite", RULES, TERMS))
    _wait_until(lambda: farm.status() is not None)
    status = farm.status()
    assert status is not None and status["requests"] == 0
    farm.started.append(status["pid"])
    _same(farm("rewrite", RULES, TERMS), farm.local("rewrite", RULES, TERMS))
    assert _served(farm, 0) == 1
    assert f"serving on {status['socket']}" in (Path(farm.env["FARM_CACHE_DIR"]) / "server.log").read_text()


@pytest.mark.parametrize(("mode", "argv", "starts"), [
    ("auto", ["rewrite", RULES, TERMS], True), ("", ["rewrite", RULES, TERMS], True),
    ("manual", ["rewrite", RULES, TERMS], False), ("off", ["rewrite", RULES, TERMS], False),
    ("auto", ["targets", "--json"], False), ("auto", ["rewrite", RULES, "-"], False),
    ("unsafe", ["rewrite", RULES, TERMS], False)])
def test_which_commands_start_a_server(warm_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], mode: str, argv: list[str],
                                       starts: bool) -> None:
    """Run for want of a server, a command the server runs starts one (farm.server.spawn), with FARM_SERVER auto
    or unset; not with manual or off, nor a command it does not run (another one, or one reading stdin), nor when
    the socket directory is not private to the user ("unsafe": a server there would be refused too)."""
    from farm import client, server

    spawned: list[str] = []
    monkeypatch.setattr(server, "spawn", spawned.append)
    if mode == "unsafe":
        (tmp_path / "farm").mkdir()
        os.chmod(tmp_path / "farm", 0o755)
    monkeypatch.setenv("FARM_SERVER", "auto" if mode == "unsafe" else mode)
    monkeypatch.setenv("FARM_CACHE_DIR", str(warm_cache))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # no server there
    monkeypatch.setattr(sys, "argv", ["farm", *argv])
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115 (closed with the process)
    code = client.main()
    assert code == (2 if "-" in argv else 0), capsys.readouterr().err
    assert spawned == ([str(warm_cache)] if starts else [])


def test_a_bad_farm_server_value_is_an_error(farm: Farm) -> None:
    done = farm("rewrite", RULES, TERMS, FARM_SERVER="sometimes")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "farm: error: FARM_SERVER is 'sometimes'; expected one of auto, manual, off (unset: auto)\n"


def test_another_path_has_a_server_of_its_own(farm: Farm) -> None:
    """The toolchain a command finds is its PATH's: a client of another PATH is not the running server's; in auto
    mode it starts one of its own, which serves it next."""
    farm.start()
    path = os.environ["PATH"] + os.pathsep + "/nonexistent"
    other = farm("rewrite", RULES, TERMS, PATH=path, FARM_SERVER="auto")
    _same(other, farm.local("rewrite", RULES, TERMS, PATH=path))
    assert _served(farm, 0) == 0
    _wait_until(lambda: farm.status(PATH=path) is not None)
    second = farm.status(PATH=path)
    assert second is not None and second["pid"] != farm.status()["pid"]  # type: ignore[index]
    farm.started.append(second["pid"])
    assert farm("rewrite", RULES, TERMS, PATH=path).returncode == 0 and _served(farm, 0, PATH=path) == 1
    assert _served(farm, 0) == 0


def test_a_request_of_another_path_is_refused(farm: Farm) -> None:
    """Should two PATHs' socket names collide, the server runs nothing for a client whose PATH is not its own."""
    from farm import client, rendezvous

    status = farm.start()
    message = {**client.request(["rewrite", RULES, TERMS], status["cache_dir"]), "path": "/elsewhere"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(status["socket"])
        conn.sendall(rendezvous.frame(rendezvous.REQUEST, rendezvous.encode(message)))
        assert rendezvous.read_frame(conn) == (rendezvous.REFUSED, b"a server started with another PATH")
    assert _served(farm, 0) == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a compile worker is kept on two cores or more")
def test_a_server_keeps_a_compile_worker_started(farm: Farm) -> None:
    """A server starts a compile worker (farm.compiler.parallel.prestart_worker) for the first compile of a new
    ruleset, which shares its pieces with it; the worker ends with the server."""
    status = farm.start()

    def workers() -> list[int]:
        return [pid for pid in _children(status["pid"]) if b"farm.compiler.parallel" in _cmdline(pid)]

    _wait_until(lambda: len(workers()) == 1)
    worker = workers()[0]
    assert farm("server", "stop").returncode == 0
    _wait_until(lambda: not _alive(worker))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def test_start_twice_status_and_stop(farm: Farm) -> None:
    status = farm.start()
    again = farm("server", "start")
    assert again.returncode == 0 and "already running" in again.stderr and str(status["pid"]) in again.stderr
    table = farm("server", "status")
    assert table.returncode == 0 and str(status["pid"]) in table.stdout and "requests served" in table.stdout
    directory = Path(status["socket"]).parent
    assert directory == Path(farm.env["XDG_RUNTIME_DIR"]) / "farm"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and directory.stat().st_uid == os.getuid()
    stopped = farm("server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert farm.status() is None and not Path(status["socket"]).exists()
    _wait_until(lambda: not _alive(status["pid"]))


def test_a_socket_directory_open_to_others_is_not_used(farm: Farm) -> None:
    (Path(farm.env["XDG_RUNTIME_DIR"]) / "farm").mkdir(mode=0o755)
    os.chmod(Path(farm.env["XDG_RUNTIME_DIR"]) / "farm", 0o755)  # whatever the umask
    started = farm("server", "start")
    assert started.returncode == 2 and "not a directory private to user" in started.stderr
    _same(farm("rewrite", RULES, TERMS), farm.local("rewrite", RULES, TERMS))  # run here


def test_an_idle_server_exits_and_removes_its_socket(farm: Farm) -> None:
    status = farm.start("--idle-timeout", "1")
    _wait_until(lambda: not _alive(status["pid"]))
    assert not Path(status["socket"]).exists()
    assert "idle for 1 s: exiting" in (Path(farm.env["FARM_CACHE_DIR"]) / "server.log").read_text()


def test_two_clients_at_once_are_both_answered(farm: Farm) -> None:
    farm.start()
    clients = [subprocess.Popen([sys.executable, "-m", "farm", "rewrite", RULES, TERMS], env=farm.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [client.communicate(timeout=300) for client in clients]
    assert [client.returncode for client in clients] == [0, 0]
    assert outputs[0][0] == outputs[1][0] and "(add x 6)" in outputs[0][0]
    assert _served(farm, 0) == 2


def test_a_server_of_other_code_is_told_and_exits(farm: Farm, tmp_path: Path) -> None:
    code = tmp_path / "code"
    shutil.copytree(ROOT / "farm", code / "farm", ignore=shutil.ignore_patterns("__pycache__"))
    farm.env["PYTHONPATH"], farm.cwd = str(code), tmp_path
    status = farm.start()
    assert farm("rewrite", RULES, TERMS).returncode == 0 and _served(farm, 0) == 1  # the copy's clients served
    touched = code / "farm" / "semantics" / "__init__.py"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # an edit
    _same(farm("rewrite", RULES, TERMS), farm.local("rewrite", RULES, TERMS))  # run locally
    _wait_until(lambda: not _alive(status["pid"]))
    assert not Path(status["socket"]).exists()


def test_held_engines_keep_the_most_recently_used(tmp_path: Path) -> None:
    held = HeldEngines(configurations=1, libraries=1)
    engine = held.get(FarmConfig(cache_dir=tmp_path))
    assert held.get(FarmConfig(cache_dir=tmp_path)) is engine  # the same settings, the same engine
    first, second = ruleset_of("rule a: (f ?x) => ?x\n"), ruleset_of("rule b: (g ?x) => ?x\n")
    engine.load(first, "first")
    engine.load(second, "second")
    assert [library[0] for library in held.loaded()] == [second.fingerprint()]
    assert held.get(FarmConfig(cache_dir=tmp_path, opt_level=1)) is not engine
    assert held.get(FarmConfig(cache_dir=tmp_path)) is not engine  # dropped for the other configuration


def test_a_rule_file_is_parsed_once_per_name_and_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """What a server's requests share: a rule file read again is parsed again only if its content (or the name it
    is given by) changed; its warnings are shown each time. At most PARSED_RULE_FILES are kept."""
    from farm.cli import common

    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "r.farm"
    rules.write_text("rule a: (f ?x) => ?x\nrule b: (f 1) => 2\n")  # b is shadowed by a: a warning
    first = common.load_ruleset("r.farm")
    assert common.load_ruleset("r.farm") is first and len(first.warnings) == 1
    assert capsys.readouterr().err.count("1 rule warning(s)") == 2
    assert common.load_ruleset(str(rules)) is not first  # another name: messages name the file so
    rules.write_text("rule a: (f ?x) => (g ?x)\n")
    changed = common.load_ruleset("r.farm")
    assert changed is not first and [rule.name for rule in changed.rules] == ["a"] and not changed.warnings
    for i in range(common.PARSED_RULE_FILES):
        (tmp_path / f"{i}.farm").write_text(f"rule r{i}: (f{i} ?x) => ?x\n")
        common.load_ruleset(f"{i}.farm")
    assert common.load_ruleset("r.farm") is not changed  # the least recently used, dropped


@pytest.mark.parametrize("case", ["variable", "config file", "default"])
def test_the_client_finds_the_cache_directory_farm_config_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                case: str) -> None:
    for name in ("FARM_CACHE_DIR", "FARM_CONFIG", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    if case == "variable":
        monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "from-variable"))
    elif case == "config file":
        (tmp_path / "farm.toml").write_text(f'cache_dir = "{tmp_path / "from-file"}"  # a comment\n')
        monkeypatch.setenv("FARM_CONFIG", str(tmp_path / "farm.toml"))
    assert locations.cache_dir(os.environ) == str(FarmConfig.from_env().cache_dir)


def _wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
