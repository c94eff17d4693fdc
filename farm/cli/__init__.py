"""The `farm` command. Each subcommand is a `Command` in the module of its group (build, rewrite, stats, cluster,
keys), owning its options; this module lists them, parses, runs one, and turns an expected failure into one clear
line and an exit code (the traceback only with -v)."""

from __future__ import annotations

import argparse
import traceback
from typing import Any

from rich.markup import escape

from farm.cli.build import Codegen, Compile, Targets
from farm.cli.cache import Cache
from farm.cli.cluster import Hot, Prewarm, Pull, Worker, Workers
from farm.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, Command, err
from farm.cli.config import Config
from farm.cli.keys import Keygen
from farm.cli.rewrite import Rewrite, Verify
from farm.cli.stats import Exporter, Stats, Top
from farm.errors import FarmError

__all__ = ["COMMANDS", "build_parser", "main"]

# In the order `farm --help` lists them.
COMMANDS: tuple[Command, ...] = (Compile(), Rewrite(), Verify(), Codegen(), Stats(), Top(), Exporter(), Cache(),
                                 Prewarm(), Pull(), Hot(), Worker(), Workers(), Targets(), Config(), Keygen())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="Compile term-rewrite rules to native code.",
                                     epilog=EXIT_CODES)
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action=_Version, help="print farm's version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


EXIT_CODES = ("exit codes: 0 done; 1 a check or a rewrite failed (a mismatch, a term without a normal form, a "
              "failed compile of a batch); 2 bad input or usage; 130 interrupted")


class _Version(argparse.Action):
    """--version, looked up only when asked (reading the installed distribution's metadata costs a few ms)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        import farm

        print(f"farm {farm.__version__} (distribution farm-rewrite)")
        parser.exit()


def _error_message(exc: Exception) -> str | None:
    """The one line an expected failure is reported with; None for a bug (its traceback is shown)."""
    from farm.extras import missing_extra

    if isinstance(exc, FarmError):
        return str(exc)
    if isinstance(exc, OSError):  # e.g. a missing input file, a port in use
        return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc)
    if isinstance(exc, ModuleNotFoundError):
        missing = missing_extra(exc)
        return str(missing) if missing else None
    return None


def main(argv: list[str] | None = None) -> int:
    verbose = False
    try:
        args = build_parser().parse_args(argv)
        verbose = args.verbose
        return args.handler(args)  # the command's run, set by Command.register
    except KeyboardInterrupt:  # Ctrl-C is how `farm top` and the exporter are stopped: no traceback
        err.print("farm: interrupted", highlight=False)
        return EXIT_INTERRUPTED
    except (FarmError, OSError, ModuleNotFoundError) as exc:
        message = _error_message(exc)
        if message is None:
            raise
        if verbose:
            traceback.print_exc()
        err.print(f"[red]farm: error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # one line
        return EXIT_ERROR
