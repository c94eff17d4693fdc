"""Commands that turn a rule file into code: `compile` (a shared library per target), `codegen` (text of one
backend), and `targets` (what they can compile for)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from farm.cli.common import (
    EXIT_OK,
    Command,
    add_opt_level,
    add_rules,
    err,
    load_ruleset,
    opt_level,
    out,
    output_file,
    pattern_id,
    progress,
    write_output,
)
from farm.errors import FarmError

if TYPE_CHECKING:
    from farm.cache.builder import Artifact
    from farm.cache.engine import Engine
    from farm.lang.transduce import RuleSet

STAGES = ("llvm-as", "opt", "llc", "as", "ld")


class Compile(Command):
    name = "compile"
    summary = "compile a rule file to a shared library"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_rules(parser)
        add_opt_level(parser)
        parser.add_argument("--target", action="append", help="target name (repeat for several); default native")

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.engine import Engine

        ruleset = load_ruleset(args.rules, args.warnings)
        engine = Engine()
        opt = opt_level(args, engine.config)
        results = _compile_for(engine, ruleset, pattern_id(args.rules), args.target or [engine.config.target], opt)
        for _, art in results:
            print(art.path)
        err.print(_stage_table(f"{args.rules}: {len(ruleset.rules)} rules, -O{opt}, stage times in ms", results))
        return EXIT_OK


def _compile_for(engine: Engine, ruleset: RuleSet, pattern: str, targets: list[str],
                 opt: int) -> list[tuple[str, Artifact]]:
    """The artifact of each target; several are built in parallel, under a progress bar."""
    from farm.cache.engine import CompileJob

    if len(targets) == 1:
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


def _stage_table(title: str, results: list[tuple[str, Artifact]]) -> Table:
    table = Table(title=title)
    table.add_column("target")
    for stage in STAGES:
        table.add_column(stage, justify="right")
    table.add_column("total", justify="right")
    table.add_column("cache")
    table.add_column("size", justify="right")
    for target, art in results:
        s = art.meta.stage_seconds
        table.add_row(target, *(f"{s.get(k, 0) * 1000:.1f}" for k in STAGES),
                      f"{sum(s.values()) * 1000:.1f}", f"hit ({art.seconds * 1000:.1f} ms)" if art.cached else "built",
                      f"{art.meta.size:,}")
    return table


class Codegen(Command):
    name = "codegen"
    summary = "emit a ruleset as LLVM IR, Rust or OpenQASM 3 text"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_rules(parser)
        parser.add_argument("--lang", choices=("llvm", "rust", "qasm"), default="llvm")
        parser.add_argument("--main", action="store_true", help="rust: add a stdin/stdout main (docs/abi.md format)")
        parser.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")

    def run(self, args: argparse.Namespace) -> int:
        output = output_file(args.output) if args.output else None  # before the work, not after
        text = _generate(load_ruleset(args.rules, args.warnings), args.lang, args.main)
        if output:
            write_output(output, text.encode())
            err.print(f"wrote {escape(args.output)} ({len(text):,} bytes of {args.lang})", highlight=False)
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
    name = "targets"
    summary = "list compilation targets"

    def run(self, args: argparse.Namespace) -> int:
        from farm.compiler.toolchain import find_tool
        from farm.targets import REGISTRY, host_can_run, missing_flags, resolve

        table = Table(title="compilation targets")
        for col in ("target", "triple", "cpu", "runs on this host"):
            table.add_column(col)
        try:
            native = resolve("native", find_tool("llc"))
        except FarmError:
            native = resolve("native")
        for target in [*REGISTRY.values(), native]:
            runs = host_can_run(target)
            why = "yes" if runs else f"no ({', '.join(missing_flags(target)[:4]) or target.arch})"
            table.add_row(target.name, target.triple, target.cpu, why)
        out.print(table)
        return EXIT_OK
