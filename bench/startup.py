#!/usr/bin/env python3
"""J1 (issue 14, goal 1): a warm `farm rewrite` in a new process against the whole `maude` process on a small
program, measured in one run; the goal is at most 3x.

Each side is a whole process, timed from spawn to exit, run `repeat` times in alternation; the fastest run of each
is reported (these machines are shared and noisy: the minimum is the least disturbed; every run is kept).
  farm    `farm rewrite examples/arith.farm examples/arith.terms` with the artifact cached: a first, untimed run
          compiles it and writes the bytecode, as an installed package has it (so PYTHONDONTWRITEBYTECODE is
          dropped for these processes); FARM_SERVER=off, so the command runs in its own process
  server  the same command with a `farm server` running (started before the runs, stopped after, its first
          request untimed): the process is farm's thin client, which hands the command to the server
  before  the same command on the code before this change (a git worktree of `before`, by default the fork point
          from main, or main's parent once the change is merged), with a cache of its own
  maude   `maude` on bench/maude.py's factorial program, its small input (fact 5 on Peano naturals)
  python  `python -c pass`: the interpreter's own start (site and its .pth files included), the floor under any
          Python command
The import profile of a warm farm run (-X importtime, by top-level module) is reported too.

Standalone: `python bench/startup.py [--repeat N] [--before REF]`; in the suite: `scripts/bench --only J1`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import maude  # noqa: E402

REPEAT = 15
PROGRAM = "factorial"  # bench/maude.py's program, run on its small input
CLI = "import sys; from farm.{} import main; sys.exit(main())"  # what the `farm` console script runs
REWRITE = ["rewrite", "examples/arith.farm", "examples/arith.terms"]


def farm_argv(checkout: Path, *python_options: str) -> list[str]:
    """The command line of the console script of the code in `checkout` (farm.client's main since there is one)."""
    entry = "client" if (checkout / "farm" / "client.py").exists() else "cli"
    return [sys.executable, *python_options, "-c", CLI.format(entry), *REWRITE]


def farm_env(checkout: Path, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("FARM_")}
    return {**env, "PYTHONPATH": str(checkout), "FARM_CACHE_DIR": str(cache), "FARM_SERVER": "off", **extra}


def wall(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, str]:
    """Seconds from spawn to exit, and the output; a failure raises (a bench of a broken command means nothing)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return seconds, proc.stdout


def default_before() -> str:
    """The fork point from main; on main itself (the change merged), main's parent."""
    base = _git("merge-base", "HEAD", "main")
    return f"{base}^" if base == _git("rev-parse", "HEAD") else base


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


@contextmanager
def worktree(ref: str, where: Path) -> Iterator[Path]:
    _git("worktree", "add", "--detach", str(where), ref)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], capture_output=True,
                       check=False)


def import_profile(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """-X importtime of one warm run: the total and every top-level import of 1 ms or more, in ms (cumulative)."""
    proc = subprocess.run(farm_argv(cwd, "-X", "importtime"), capture_output=True, text=True, env=env, cwd=cwd,
                          check=True)
    top: dict[str, float] = {}
    loaded = set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line.split(":", 1)[1].split("|")
        loaded.add(name.strip())
        if not name.startswith("  ", 1):  # depth 0 (one space after the bar): imported by the program itself
            top[name.strip()] = int(cumulative) / 1000
    return {"total_ms": round(sum(top.values()), 1),
            "top_level_ms": {name: round(ms, 1) for name, ms in sorted(top.items(), key=lambda kv: -kv[1]) if ms >= 1},
            "llvmlite_loaded": any(name.startswith("llvmlite") for name in loaded)}


def measure(tmp: Path, repeat: int = REPEAT, before: str | None = "") -> dict[str, Any]:
    """The J1 figures; `before`: a git ref to measure too ("" for the default, None for none)."""
    program = maude.BY_KEY[PROGRAM]
    source = tmp / "startup.maude"
    source.write_text(maude.maude_source(program, f"red {maude.maude_term(program.small_term)} ."))
    # the server's socket in a directory of this run's: a server the user runs is not disturbed, nor used
    served = farm_env(ROOT, tmp / "startup-cache", FARM_SERVER="auto", XDG_RUNTIME_DIR=str(tmp / "run"))
    sides: dict[str, tuple[list[str], dict[str, str] | None, Path | None]] = {
        "farm": (farm_argv(ROOT), farm_env(ROOT, tmp / "startup-cache"), ROOT),
        "server": (farm_argv(ROOT), served, ROOT),
        "maude": (["maude", "-no-banner", "-no-advise", str(source)], None, None),
        "python": ([sys.executable, "-c", "pass"], None, None),
    }
    ref = None if before is None else before or default_before()
    (tmp / "run").mkdir(mode=0o700)
    with _before_side(tmp, ref) as checkout, farm_server(served):
        if checkout is not None:
            sides["before"] = (farm_argv(checkout), farm_env(checkout, tmp / "startup-cache-before"), checkout)
        outputs = {}
        for name, (argv, env, cwd) in sides.items():  # warm-up: compile, write bytecode, check the output
            outputs[name] = wall(argv, env, cwd)[1]
        if "result" not in outputs["maude"]:
            raise RuntimeError(f"unexpected Maude output: {outputs['maude'][-300:]}")
        if "before" in outputs and outputs["before"] != outputs["farm"]:
            raise RuntimeError("the code before the change gives other normal forms")
        if outputs["server"] != outputs["farm"]:
            raise RuntimeError("the server gives other normal forms")
        runs: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(repeat):
            for name, (argv, env, cwd) in sides.items():
                runs[name].append(wall(argv, env, cwd)[0])
        if server_requests(served) < repeat + 1:
            raise RuntimeError("the server side's commands did not all go to the server")
        imports = {"farm": import_profile(*sides["farm"][1:]),  # type: ignore[arg-type]
                   "server": import_profile(*sides["server"][1:])}  # type: ignore[arg-type]
        if "before" in sides:
            imports["before"] = import_profile(*sides["before"][1:])  # type: ignore[arg-type]
    best = {name: min(times) * 1000 for name, times in runs.items()}
    report: dict[str, Any] = {
        "repeat": repeat, "maude_program": f"{program.key}, small input {program.small_term}",
        "farm_ms": best["farm"], "maude_ms": best["maude"], "python_ms": best["python"],
        "ratio": best["farm"] / best["maude"], "python_floor_ratio": best["python"] / best["maude"],
        "server_ms": best["server"], "server_ratio": best["server"] / best["maude"],
        "runs_ms": {name: [round(t * 1000, 1) for t in times] for name, times in runs.items()},
        "imports": imports}
    if "before" in best:
        report.update(before_ref=ref, before_ms=best["before"], before_ratio=best["before"] / best["maude"],
                      speedup=best["before"] / best["farm"])
    return report


def farm_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120, check=False)


@contextmanager
def farm_server(env: dict[str, str]) -> Iterator[None]:
    """A `farm server` for the server side, stopped at the end."""
    started = farm_cli(env, "server", "start", "--idle-timeout", "900")
    if started.returncode != 0:
        raise RuntimeError(f"farm server start exited {started.returncode}: {started.stderr.strip()[-500:]}")
    try:
        yield
    finally:
        farm_cli(env, "server", "stop")


def server_requests(env: dict[str, str]) -> int:
    status = json.loads(farm_cli(env, "server", "status", "--json").stdout)
    return int(status.get("requests", 0))


@contextmanager
def _before_side(tmp: Path, before: str | None) -> Iterator[Path | None]:
    if before is None:
        yield None
        return
    with worktree(before, tmp / "before") as checkout:
        yield checkout


def markdown(report: dict[str, Any]) -> str:
    rows = [("warm `farm rewrite` (new process)", report["farm_ms"], report["ratio"]),
            ("the same through a running `farm server` (a new client process)", report["server_ms"],
             report["server_ratio"])]
    if "before_ms" in report:
        rows.append((f"the same, before ({report['before_ref']})", report["before_ms"], report["before_ratio"]))
    rows += [("`python -c pass` (the floor)", report["python_ms"], report["python_floor_ratio"]),
             (f"whole `maude` process ({report['maude_program']})", report["maude_ms"], 1.0)]
    lines = [f"Fastest of {report['repeat']} alternating runs, whole processes.", "",
             "| process | ms | vs maude |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {ratio:.2f}x |" for name, ms, ratio in rows]
    for side, profile in report["imports"].items():
        top = ", ".join(f"{name} {ms:.0f}" for name, ms in list(profile["top_level_ms"].items())[:8])
        lines.append(f"\n-X importtime ({side}): {profile['total_ms']:.0f} ms in all; llvmlite loaded: "
                     f"{'yes' if profile['llvmlite_loaded'] else 'no'}; top level (ms): {top}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=REPEAT)
    parser.add_argument("--before", default="", help="git ref of the code before (default: the fork point from "
                                                     "main, or main's parent on main); 'none' to skip")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = measure(Path(tmp), args.repeat, None if args.before == "none" else args.before)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
