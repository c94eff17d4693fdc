"""Commands that run a ruleset: `rewrite` (terms of a file to normal form) and `verify` (native, interpreter and
oracle against each other on random terms). Both choose the engine, the target and the fuel the same way."""

from __future__ import annotations

import argparse
import time
import warnings
from typing import TYPE_CHECKING

from farm.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Command,
    add_rules,
    load_ruleset,
    pattern_id,
    print_normal_forms,
    progress,
    whole_number,
)
from farm.cli.console import err, say
from farm.inputs import TERMS, read_input_text

if TYPE_CHECKING:
    from rich.table import Table

    from farm.lang.transduce import RuleSet
    from farm.runtime.verify import VerifyReport
    from farm.semantics import RewriteResult


def add_engine_options(parser: argparse.ArgumentParser, fuel: int) -> None:
    """Where and how long the rules run: the target, the rewrite steps allowed per term, the engine."""
    from farm.semantics import MAX_FUEL

    parser.add_argument("--target", default=None,
                        help="the one CPU target to compile for (`farm targets` lists them); default: FARM_TARGET, "
                             "else native")
    parser.add_argument("--fuel", type=whole_number(1, MAX_FUEL), default=fuel, metavar="STEPS",
                        help="rewrite steps allowed per term (at least 1)")
    parser.add_argument("--engine", choices=("auto", "native", "interpreter"), default="auto",
                        help="native code, the interpreter, or native with the interpreter when no toolchain")


class Rewrite(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        from farm.semantics import DEFAULT_FUEL

        add_rules(parser)
        parser.add_argument("terms", help="file of terms, e.g. (add x 0)")
        parser.add_argument("--stats", action="store_true", help="show the rule firing table")
        add_engine_options(parser, fuel=DEFAULT_FUEL)

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.engine import command_engine
        from farm.lang.terms import TermGraph

        ruleset = load_ruleset(args.rules, args.warnings)
        graph = TermGraph(ruleset.make_signature())
        roots = graph.parse(read_input_text(args.terms, TERMS), args.terms)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine = command_engine()
            result = engine.rewrite(ruleset, graph, roots, pattern_id(args.rules), args.fuel, args.engine,
                                    args.target)
        for w in caught:
            say(f": {w.message}", lead="warning", style="yellow")
        elapsed = time.perf_counter() - start
        failed = print_normal_forms(result)
        say(f"{len(roots)} term(s) rewritten by the {result.engine} in {elapsed * 1000:.1f} ms, "
            f"{sum(result.firings)} rule firings")
        if args.stats:
            err().print(_firings_table(ruleset, result))
        if engine.background.pending():  # the results are out; the library lands for the next process
            say("storing the compiled library for the next run...")
            engine.wait_for_builds()
        return EXIT_FAILED if failed else EXIT_OK


def _firings_table(ruleset: RuleSet, result: RewriteResult) -> Table:
    """The rules that fired, most firings first."""
    from rich.table import Table  # only when printed: a plain rewrite does not load it

    table = Table(title="rule firings")
    table.add_column("rule")
    table.add_column("firings", justify="right")
    for rule, count in sorted(zip(ruleset.rules, result.firings), key=lambda p: -p[1]):
        if count:
            table.add_row(rule.name, f"{count:,}")
    return table


class Verify(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_rules(parser)
        add_engine_options(parser, fuel=10_000)
        parser.add_argument("--cases", type=whole_number(1), default=2000, metavar="N", help="random terms to check")
        parser.add_argument("--seed", type=int, default=1, help="seed of the random terms (the same seed, the same "
                                                                "terms)")

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.engine import command_engine, load_native
        from farm.runtime.verify import VerifyReport, differential

        ruleset = load_ruleset(args.rules, args.warnings)
        native = None
        if args.engine != "interpreter":
            engine = command_engine()
            native = load_native(ruleset, engine.compile(ruleset, pattern_id(args.rules), args.target),
                                 engine.builder.trusted)
        report = VerifyReport()
        batch = max(1, min(500, args.cases))
        with progress() as bar:
            task = bar.add_task("verifying", total=args.cases)
            seed = args.seed
            while report.cases < args.cases:
                n = min(batch, args.cases - report.cases)
                differential(ruleset, native, n, seed, args.fuel, report)
                seed += 1
                bar.advance(task, n)
        err().print(_report_table(f"differential check of {args.rules}", report, native is not None))
        for line in report.mismatches[:20]:
            print(f"MISMATCH {line}")
        return EXIT_OK if report.ok else EXIT_FAILED


def _report_table(title: str, report: VerifyReport, with_native: bool) -> Table:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in [("random cases", report.cases), ("checked against the oracle", report.oracle_checked),
                        ("non-terminating (fuel)", report.nonterminating), ("rule firings", report.firings),
                        ("engines", "native, interpreter, oracle" if with_native else "interpreter, oracle"),
                        ("mismatches", len(report.mismatches))]:
        table.add_row(name, f"{value:,}" if isinstance(value, int) else value)
    return table
