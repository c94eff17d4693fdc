"""The `farm` command end to end, in a subprocess like a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES, ROOT


def farm(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FARM_CACHE_DIR": str(cache), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300, check=False)


def test_compile_rewrite_verify_stats_targets(tmp_path: Path) -> None:
    arith = str(EXAMPLES / "arith.farm")
    compiled = farm("compile", arith, "--target", "x86-64", "--target", "aarch64", "-O", "1", cache=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    paths = compiled.stdout.split()
    assert len(paths) == 2 and all(Path(p).exists() for p in paths)
    assert "llvm-as" in compiled.stderr and "llc" in compiled.stderr

    rewritten = farm("rewrite", arith, str(EXAMPLES / "arith.terms"), "--stats", cache=tmp_path)
    assert rewritten.returncode == 0, rewritten.stderr
    lines = rewritten.stdout.splitlines()
    assert lines[1] == "(add x 6)" and "rewritten by the native" in rewritten.stderr and "fold_add" in rewritten.stderr

    verified = farm("verify", arith, "--cases", "500", cache=tmp_path)
    assert verified.returncode == 0 and "mismatches" in verified.stderr

    stats = farm("stats", cache=tmp_path)
    assert stats.returncode == 0 and "compilations ok" in stats.stdout and "hit rate" in stats.stdout

    rust = farm("codegen", arith, "--lang", "rust", "-o", str(tmp_path / "arith.rs"), cache=tmp_path)
    assert rust.returncode == 0 and "pub fn normalize_root" in (tmp_path / "arith.rs").read_text()
    qasm = farm("codegen", arith, "--lang", "qasm", cache=tmp_path)
    assert qasm.returncode == 2 and "cannot be expressed in OpenQASM" in qasm.stderr

    targets = farm("targets", cache=tmp_path)
    assert "aarch64-neoverse-n1" in targets.stdout and "x86-64-v4" in targets.stdout


def test_bad_rule_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.farm"
    bad.write_text("rule ok: (f ?x) => ?x\nrule broken: (f ?x => ?x\n")
    result = farm("compile", str(bad), cache=tmp_path)
    assert result.returncode == 2
    assert f"{bad}:2:" in result.stderr and "Traceback" not in result.stderr
    missing = farm("rewrite", str(tmp_path / "none.farm"), "x", cache=tmp_path)
    assert missing.returncode == 2 and "no such rule file" in missing.stderr


def test_nonterminating_terms_report_errors_per_term(tmp_path: Path) -> None:
    rules = tmp_path / "loop.farm"
    rules.write_text("rule swap [bidirectional]: (f a) => (f b)\n")
    terms = tmp_path / "t.terms"
    terms.write_text("(f a) (g a)")
    result = farm("rewrite", str(rules), str(terms), "--fuel", "100", cache=tmp_path)
    assert result.returncode == 1
    first, second = result.stdout.splitlines()
    assert first.startswith("error: rewriting loops") and second == "(g a)"


def test_interpreter_engine_gives_the_same_output(tmp_path: Path) -> None:
    args = (str(EXAMPLES / "bool.farm"), str(EXAMPLES / "bool.terms"))
    native = farm("rewrite", *args, "--engine", "native", cache=tmp_path)
    interp = farm("rewrite", *args, "--engine", "interpreter", cache=tmp_path)
    assert native.stdout == interp.stdout and native.returncode == interp.returncode == 0
    assert "interpreter" in interp.stderr


# --- -O: one option, one default (the configuration's) for every command that compiles -------------------------

class RecordingCoordinator:
    """Stands in for the cluster: answers every request as cached and keeps the requests."""

    def __init__(self) -> None:
        from farm.config import FarmConfig

        self.config = FarmConfig.from_env()
        self.requests: list[Any] = []
        RecordingCoordinator.last = self

    last: RecordingCoordinator

    def ensure(self, requests: list[Any], timeout: float, progress: Callable[[Any], None]) -> list[Any]:
        from farm.cluster.coordinator import Outcome

        self.requests += requests
        outcomes = [Outcome(request, "0" * 64, "cached") for request in requests]
        for outcome in outcomes:
            progress(outcome)
        return outcomes


def _compiled_level(argv: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    from farm.cli import main

    assert main(argv) == 0
    if argv[0] == "prewarm":
        return int(RecordingCoordinator.last.requests[0].opt_level)
    library = Path(capsys.readouterr().out.split()[-1])
    return int(json.loads(library.with_suffix(".json").read_text())["opt_level"])


@pytest.mark.parametrize("command", ["compile", "prewarm"])
def test_every_compiling_command_takes_its_default_level_from_the_config(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "one.farm"
    rules.write_text("rule one: (f ?x) => ?x\n")
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FARM_CONFIG", raising=False)
    monkeypatch.setattr("workers.app.make_coordinator", lambda config: RecordingCoordinator())
    argv = [command, str(rules), "--targets" if command == "prewarm" else "--target", "x86-64"]
    monkeypatch.delenv("FARM_OPT_LEVEL", raising=False)
    assert _compiled_level(argv, capsys) == 2
    monkeypatch.setenv("FARM_OPT_LEVEL", "1")
    assert _compiled_level(argv, capsys) == 1
    assert _compiled_level([*argv, "-O", "3"], capsys) == 3  # the option still overrides the configuration


def test_scripts_get_json_and_people_get_tables(tmp_path: Path) -> None:
    """--json on the commands that show figures: one JSON document on stdout, the same facts as the table."""
    arith = str(EXAMPLES / "arith.farm")
    compiled = farm("compile", arith, "--targets", "x86-64,aarch64", "--target", "x86-64", "-O", "0", cache=tmp_path)
    assert compiled.returncode == 0 and len(compiled.stdout.split()) == 2, compiled.stderr  # listed once each
    stats = json.loads(farm("stats", "--json", cache=tmp_path).stdout)
    assert stats["tier"] == "local" and stats["counters"]["compilations_ok"] == 2 and stats["artifacts"] == 2
    assert stats["artifact_bytes"] > 0 and {c["target"] for c in stats["compilations"]} == {"x86-64", "aarch64"}
    assert {s["stage"] for s in stats["stage_seconds"]} >= {"llc", "ld"}
    targets = json.loads(farm("targets", "--json", cache=tmp_path).stdout)
    by_name = {t["target"]: t for t in targets}
    assert by_name["x86-64"]["runs_here"] is True and by_name["aarch64"]["runs_here"] is False
    assert by_name["aarch64-neoverse-n1"]["triple"].startswith("aarch64")


def test_version_help_and_exit_codes(tmp_path: Path) -> None:
    version = farm("--version", cache=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("farm ") and "farm-rewrite" in version.stdout
    overview = farm("--help", cache=tmp_path)
    assert "2 bad input or usage" in overview.stdout and "130 interrupted" in overview.stdout
    rewrite = farm("rewrite", "--help", cache=tmp_path)
    assert "(default: 10000000)" in rewrite.stdout and "--fuel STEPS" in rewrite.stdout
    for command in ("hot", "workers"):
        needs_cluster = farm(command, cache=tmp_path)
        assert needs_cluster.returncode == 2 and "FARM_REDIS_URL" in needs_cluster.stderr


def test_messages_are_never_cut_into_a_pipe(tmp_path: Path) -> None:
    """stderr is a pipe here (80 columns for rich): a long warning or error still comes out as one line each."""
    folder = tmp_path / ("a-directory-with-a-long-name-" * 4)
    folder.mkdir()
    rules = folder / "rules.farm"
    rules.write_text("rule first: (f ?x) => ?x\nrule shadowed: (f 1) => 2\n")
    env = {**{k: v for k, v in os.environ.items() if k != "COLUMNS"}, "FARM_CACHE_DIR": str(tmp_path)}

    def stderr_lines(*args: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "farm.cli", *args], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=120, check=False)
        return [line for line in done.stderr.splitlines() if line.strip()]

    warned = stderr_lines("codegen", str(rules), "--warnings", "-o", str(tmp_path / "out.ll"))
    warned = [line for line in warned if not line.startswith("wrote ")]
    assert warned and all(line.startswith(f"warning: {rules}: ") for line in warned), warned
    failed = stderr_lines("compile", str(folder / "missing.farm"))
    assert len(failed) == 1 and str(folder / "missing.farm") in failed[0], failed


def test_the_stage_table_shows_the_stages_that_ran(tmp_path: Path) -> None:
    """Staged tools or in process: the columns are the stages the build had, none of them all zeros."""
    arith = str(EXAMPLES / "arith.farm")
    env = {**os.environ, "FARM_CACHE_DIR": str(tmp_path / "inprocess"), "FARM_COMPILE_PATH": "inprocess",
           "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "farm.cli", "compile", arith, "-O", "0"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300, check=False)
    header = next(line for line in done.stderr.splitlines() if "target" in line)
    assert done.returncode == 0 and "codegen" in header and "llc" not in header, done.stderr
    staged = farm("compile", arith, "-O", "0", cache=tmp_path / "staged")
    header = next(line for line in staged.stderr.splitlines() if "target" in line)
    assert "llc" in header and "codegen" not in header


def test_farm_config_shows_each_value_and_where_it_comes_from(tmp_path: Path) -> None:
    config_file = tmp_path / "farm.toml"
    config_file.write_text('opt_level = 1  # fast\nredis_url = "redis://:hunter2@redis:6379/0"\n')
    env = {**os.environ, "FARM_CONFIG": str(config_file), "FARM_TARGET": "x86-64", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "farm.cli", "config", "--json"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60, check=False)
    shown = {s["name"]: s for s in json.loads(done.stdout)["settings"]}
    assert shown["FARM_OPT_LEVEL"] == {"name": "FARM_OPT_LEVEL", "value": "1", "origin": f"{config_file}:1"}
    assert shown["FARM_TARGET"]["origin"] == "environment" and shown["FARM_STAGE_TIMEOUT"]["origin"] == "default"
    assert "hunter2" not in done.stdout and shown["FARM_REDIS_URL"]["value"] == "redis://:***@redis:6379/0"
    table = subprocess.run([sys.executable, "-m", "farm.cli", "config"], capture_output=True, text=True, cwd=ROOT,
                           env=env, timeout=60, check=False)
    assert f"{config_file}:1" in table.stdout and "hunter2" not in table.stdout


def test_a_relative_cache_directory_is_the_one_under_the_working_directory(tmp_path: Path) -> None:
    """FARM_CACHE_DIR=cache: the library built in the background (its objects linked by ld.lld, which runs
    elsewhere) lands under this directory's cache, and the next process finds it there."""
    env = {**os.environ, "FARM_CACHE_DIR": "cache", "FARM_SERVER": "off"}
    arith, terms = str(EXAMPLES / "arith.farm"), str(EXAMPLES / "arith.terms")
    runs = [subprocess.run([sys.executable, "-m", "farm.cli", "rewrite", arith, terms], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300, check=False) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    assert list((tmp_path / "cache").rglob("*.so")), runs[0].stderr
    assert "storing the compiled library" not in runs[1].stderr  # a hit: nothing left to build
