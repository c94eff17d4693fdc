"""The `farm` command. Each subcommand is a `Command` in the module of its group (build, rewrite, stats, cluster,
cache, server, config, keys), owning its options; this module lists them (pip-style: a table of names, modules and
summaries, a command's module imported only when it runs or its help is asked for), parses, runs one, and turns an
expected failure into one clear line and an exit code (the traceback only with -v)."""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from farm.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, Command
from farm.cli.console import say
from farm.errors import FarmError

__all__ = ["COMMANDS", "build_parser", "load_command", "main"]


class CommandInfo(NamedTuple):
    module: str  # farm.cli.<group>
    class_name: str
    summary: str  # the one line of `farm --help`, and the command's description


# In the order `farm --help` lists them.
COMMANDS: dict[str, CommandInfo] = {
    "compile": CommandInfo("farm.cli.build", "Compile", "compile a rule file to a shared library"),
    "rewrite": CommandInfo("farm.cli.rewrite", "Rewrite", "rewrite the terms of a file to normal form"),
    "verify": CommandInfo("farm.cli.rewrite", "Verify",
                          "differential check: native == interpreter == oracle on random terms"),
    "codegen": CommandInfo("farm.cli.build", "Codegen", "emit a ruleset as LLVM IR, Rust or OpenQASM 3 text"),
    "stats": CommandInfo("farm.cli.stats", "Stats", "cache and compilation statistics"),
    "top": CommandInfo("farm.cli.stats", "Top", "a live terminal view of the statistics"),
    "exporter": CommandInfo("farm.cli.stats", "Exporter", "serve the farm's metrics to Prometheus"),
    "cache": CommandInfo("farm.cli.cache", "Cache", "list, show, collect (gc) and clear the artifact caches"),
    "server": CommandInfo("farm.cli.server", "Server",
                          "start, stop or show the local server that runs commands without a new process's start-up"),
    "prewarm": CommandInfo("farm.cli.cluster", "Prewarm",
                           "cluster: compile every rule of a hot list for some targets, in batches"),
    "pull": CommandInfo("farm.cli.cluster", "Pull",
                        "cluster: fetch, verify and load the best artifact of a pattern for this host"),
    "hot": CommandInfo("farm.cli.cluster", "Hot", "cluster: the hottest patterns"),
    "worker": CommandInfo("farm.cli.cluster", "Worker", "cluster: run a Celery worker for some targets"),
    "workers": CommandInfo("farm.cli.cluster", "Workers",
                           "cluster: the live workers, their targets, toolchains and load"),
    "targets": CommandInfo("farm.cli.build", "Targets", "list compilation targets"),
    "config": CommandInfo("farm.cli.config", "Config", "the effective configuration and where each value comes from"),
    "keygen": CommandInfo("farm.cli.keys", "Keygen",
                          "make an Ed25519 key pair: PREFIX.key signs (builders), PREFIX.pub verifies (nodes)"),
}


def load_command(name: str) -> Command:
    """The command `name`, its module imported."""
    info = COMMANDS[name]
    command: Command = getattr(importlib.import_module(info.module), info.class_name)(name, info.summary)
    return command


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """`farm`'s parser for a command line (None: for any). Usage lines name every command, and the command the line
    runs has its options (its module imported); the others are imported only for `None`. When nothing but -v
    comes before the command, only that command is registered: nothing else can show."""
    parser = argparse.ArgumentParser(prog="farm", description="Compile term-rewrite rules to native code.",
                                     epilog=EXIT_CODES)
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action=_Version, help="print farm's version and exit")
    if argv is not None and (only := named_command(argv)) is not None:  # the metavar argparse makes of all names
        load_command(only).register(parser.add_subparsers(dest="command", required=True,
                                                          metavar=f"{{{','.join(COMMANDS)}}}"))
        return parser
    # `farm --help`, a typo, other options first (-h, --version, abbreviations): every command is listed, and the
    # one argparse will run (the first argument that is not an option: farm's options take no value) registered.
    runs = None if argv is None else next((arg for arg in argv if not arg.startswith("-")), "")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, info in COMMANDS.items():
        if runs is None or name == runs:
            load_command(name).register(subparsers)
        else:
            subparsers.add_parser(name, help=info.summary)
    return parser


def named_command(argv: Sequence[str]) -> str | None:
    """The command a command line runs when nothing but -v comes before it; else None."""
    for arg in argv:
        if arg not in ("-v", "--verbose"):
            return arg if arg in COMMANDS else None
    return None


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
    """Run a command line (None: this process's, as the `farm` command does) and return the exit code."""
    if argv is None:
        atexit.register(_leave_to_the_os)  # the first registered, the last run
    verbose = False
    try:
        arguments = sys.argv[1:] if argv is None else argv
        args = build_parser(arguments).parse_args(arguments)
        verbose = args.verbose
        return args.handler(args)  # the command's run, set by Command.register
    except KeyboardInterrupt:  # Ctrl-C is how `farm top` and the exporter are stopped: no traceback
        say("farm: interrupted")
        return EXIT_INTERRUPTED
    except (FarmError, OSError, ModuleNotFoundError) as exc:
        message = _error_message(exc)
        if message is None:
            raise
        if verbose:
            import traceback

            traceback.print_exc()
        say(f" {message}", lead="farm: error:", style="red")  # one line
        return EXIT_ERROR


def _leave_to_the_os() -> None:
    """When the command is the process, its last exit handler: the interpreter's final garbage collections walk
    every object the process made (about 10 ms after a cached rewrite, as long as all of its work) to reclaim
    memory the OS is about to take back whole. Frozen, the objects are out of their sight: each is still freed
    when its last reference goes, only reference cycles are left to the OS (Python does not promise to finalise
    what is alive at exit; the other exit handlers, which clean up, have run)."""
    gc.freeze()
