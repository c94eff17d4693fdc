"""Commands that turn a rule file into code: `compile` (a shared library per target), `codegen` (text of one
backend), and `targets` (what they can compile for)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rich.table import Table

from farm.cli.common import (
    EXIT_OK,
    Command,
    add_json,
    add_opt_level,
    add_rules,
    add_targets,
    load_ruleset,
    opt_level,
    output_file,
    pattern_id,
    print_json,
    progress,
    write_output,
)
from farm.cli.console import err, out, say
from farm.errors import FarmError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from farm.cache.builder import Artifact
    from farm.cache.engine import Engine
    from farm.lang.transduce import RuleSet

# The stages of the two compile paths, in the order they run: staged tools, or in process (llvmlite).
STAGES = ("parse", "llvm-as", "policy", "opt", "llc", "codegen", "as", "ld")


class Compile(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_rules(parser)
        add_opt_level(parser)
        add_targets(parser, required=False, what="what to compile for (several are built in parallel; default: "
                                                  "FARM_TARGET, else native)")

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.engine import Engine

        ruleset = load_ruleset(args.rules, args.warnings)
        engine = Engine()
        opt = opt_level(args, engine.config)
        results = _compile_for(engine, ruleset, pattern_id(args.rules), args.targets or [engine.config.target], opt)
        for _, art in results:
            print(art.path)
        err().print(_stage_table(f"{args.rules}: {len(ruleset.rules)} rules, -O{opt}, stage times in ms", results))
        return EXIT_OK


def _compile_for(engine: Engine, ruleset: RuleSet, pattern: str, targets: list[str],
                 opt: int) -> list[tuple[str, Artifact]]:
    """The artifact of each target; several are built in parallel, under a progress bar."""
    from farm.cache.engine import CompileJob
    from farm.compiler.toolchain import reporting_progress

    if len(targets) == 1:  # one build: its bar counts modules
        with _ModuleBar() as modules, reporting_progress(modules.report):
            return [(targets[0], engine.compile(ruleset, pattern, targets[0], opt))]
    jobs = [CompileJob(ruleset, pattern, t, opt) for t in targets]
    results = []
    with progress() as bar:
        task = bar.add_task("compiling", total=len(jobs))
        for job, result in engine.compile_many(jobs):
            if isinstance(result, FarmError):
                raise result
            results.append((job.target, result))
            bar.advance(task)
    return results


class _ModuleBar:
    """A progress bar over one build's modules, shown from the build's first report (a cache hit shows none)."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def report(self, step: str, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress()
            self.bar.start()
        if self.task is None:
            self.task = self.bar.add_task(step, total=total)
        self.bar.update(self.task, description=f"{step} modules", completed=done, total=total)

    def __enter__(self) -> _ModuleBar:
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _stage_table(title: str, results: list[tuple[str, Artifact]]) -> Table:
    """Time per stage, for the stages the builds ran (the staged tools' or the in-process ones)."""
    ran = {stage for _, art in results for stage in art.meta.stage_seconds}
    stages = [stage for stage in STAGES if stage in ran] + sorted(ran - set(STAGES))
    table = Table(title=title)
    table.add_column("target")
    for stage in stages:
        table.add_column(stage, justify="right")
    table.add_column("total", justify="right")
    table.add_column("cache")
    table.add_column("size", justify="right")
    for target, art in results:
        s = art.meta.stage_seconds
        table.add_row(target, *(f"{s.get(k, 0) * 1000:.1f}" for k in stages),
                      f"{sum(s.values()) * 1000:.1f}", f"hit ({art.seconds * 1000:.1f} ms)" if art.cached else "built",
                      f"{art.meta.size:,}")
    return table


class Codegen(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_rules(parser)
        parser.add_argument("--lang", choices=("llvm", "rust", "qasm"), default="llvm", help="the backend's language")
        parser.add_argument("--main", action="store_true", help="rust: add a stdin/stdout main (docs/abi.md format)")
        parser.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")

    def run(self, args: argparse.Namespace) -> int:
        output = output_file(args.output) if args.output else None  # before the work, not after
        text = _generate(load_ruleset(args.rules, args.warnings), args.lang, args.main)
        if output:
            write_output(output, text.encode())
            say(f"wrote {args.output} ({len(text):,} bytes of {args.lang})")
        else:
            sys.stdout.write(text)
        return EXIT_OK


def _generate(ruleset: RuleSet, lang: str, with_main: bool) -> str:
    from farm.compiler.codegen.llvm import generate_llvm_ir
    from farm.compiler.codegen.qasm import generate_qasm
    from farm.compiler.codegen.rust import generate_rust
    from farm.semantics.callgraph import memoised_ops, tracked_ops

    if lang == "rust":
        return generate_rust(ruleset, with_main)
    if lang == "qasm":
        return generate_qasm(ruleset)
    text = generate_llvm_ir(ruleset)
    # what docs/rules.md ("Memo") says codegen shows, as IR comments
    return "".join(f"; {kind} operators (docs/rules.md, \"Semantics\"): {', '.join(sorted(ops)) or 'none'}\n"
                   for kind, ops in (("memoised", memoised_ops(ruleset)), ("tracked", tracked_ops(ruleset)))) + text


class Targets(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        from farm.compiler.tools import find_tool
        from farm.targets import REGISTRY, host_can_run, missing_flags, resolve

        try:
            native = resolve("native", find_tool("llc"))
        except FarmError:
            native = resolve("native")
        targets = [*REGISTRY.values(), native]
        if args.json:
            print_json([{"target": t.name, "triple": t.triple, "cpu": t.cpu, "features": t.features, "arch": t.arch,
                         "runs_here": host_can_run(t), "missing_flags": missing_flags(t)} for t in targets])
            return EXIT_OK
        table = Table(title="compilation targets")
        for col in ("target", "triple", "cpu", "runs on this host"):
            table.add_column(col)
        for target in targets:
            runs = host_can_run(target)
            why = "yes" if runs else f"no ({', '.join(missing_flags(target)[:4]) or target.arch})"
            table.add_row(target.name, target.triple, target.cpu, why)
        out().print(table)
        return EXIT_OK
