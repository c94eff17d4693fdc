"""What the commands share: the exit codes, the `Command` base, the options more than one command takes (each
defined once here), and the helpers for rule files, output files and normal forms (the consoles are in
farm/cli/console.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from farm.cli.console import err, say
from farm.errors import OutputPathError

if TYPE_CHECKING:
    from rich.progress import Progress

    from farm.config import FarmConfig
    from farm.lang.transduce import RuleSet
    from farm.semantics import RewriteResult

# 2: bad input or usage (argparse's own code too); 130: interrupted (128 + SIGINT, as shells report it)
EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
T = TypeVar("T")


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, where it has one (each option's help names its unit); a flag
    or an option whose default is "not given" says nothing more."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Command:
    """One subcommand, pip-style: its options and its run, side by side in one class, made with its name and
    one-line summary (farm.cli.COMMANDS lists them). `run` returns the exit code."""

    def __init__(self, name: str, summary: str) -> None:
        self.name = name
        self.summary = summary

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """The command's arguments; a command without any keeps this."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError

    def register(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        parser = subparsers.add_parser(self.name, help=self.summary, description=self.summary,
                                       formatter_class=HelpWithDefaults)
        self.add_options(parser)
        parser.set_defaults(handler=self.run)


class Group(Command):
    """A command of actions (`farm cache ls`, `farm server start`): `actions` names each one's class and summary."""

    actions: dict[str, tuple[type[Command], str]] = {}

    def register(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        parser = subparsers.add_parser(self.name, help=self.summary)
        actions = parser.add_subparsers(dest=f"{self.name}_command", required=True,
                                        metavar=f"{{{','.join(self.actions)}}}")
        for name, (action, summary) in self.actions.items():
            action(name, summary).register(actions)


# Options taken by several commands: one definition each, so that their spellings and defaults cannot drift apart.

def add_rules(parser: argparse.ArgumentParser) -> None:
    """The rule file of every command that reads one, and the switch that lists its warnings."""
    parser.add_argument("rules", help="rule file (see docs/rules.md)")
    parser.add_argument("--warnings", action="store_true", help="list rule overlap warnings")


def add_opt_level(parser: argparse.ArgumentParser) -> None:
    """-O of every command that compiles (its default is the configuration's: see `opt_level`)."""
    parser.add_argument("-O", dest="opt", type=int, choices=range(4), default=None,
                        help="optimisation level (default: FARM_OPT_LEVEL, else the config file's opt_level, else 2)")


class _TargetList(argparse.Action):
    """--targets a,b (or repeated, or spelled --target): one list of names, in order, without repeats."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        names = list(getattr(namespace, self.dest, None) or [])
        names += [name for name in (part.strip() for part in str(values).split(",")) if name and name not in names]
        setattr(namespace, self.dest, names)


def add_targets(parser: argparse.ArgumentParser, required: bool, what: str) -> None:
    """--targets of every command that takes several CPU targets: comma-separated, or repeated; `--target` is
    the same option (a command that takes exactly one target has its own --target)."""
    parser.add_argument("--targets", "--target", dest="targets", action=_TargetList, required=required,
                        default=None if required else [], metavar="T[,T...]",
                        help=f"{what}: comma-separated target names (`farm targets` lists them), or the option "
                             "repeated")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")


def print_json(document: Any) -> None:
    """One JSON document on stdout, for scripts: plain text, no colour, no wrapping."""
    import json

    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


def opt_level(args: argparse.Namespace, config: FarmConfig) -> int:
    """-O if given, else the configuration's level (FARM_OPT_LEVEL or the config file)."""
    return config.opt_level if args.opt is None else args.opt


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from one of farm.config's parsers: a bad value is a usage error saying what is expected."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {exc}") from None

    return convert


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for an integer from `low` (to `high`), read as the configuration reads one."""
    from farm.config import integer

    return checked(integer(low, high))


def port_number() -> Callable[[str], int]:
    return whole_number(0, 65535)


def duration() -> Callable[[str], float]:
    """An argparse type for a number of seconds above zero."""
    from farm.config import seconds

    return checked(seconds(above=0))


def progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err(), transient=False)


# Rule files parsed and checked by this process, by name and content: a `farm server` answers the same file's
# requests without parsing it again (arith.farm: 5.3 ms a request). A RuleSet is immutable, its warnings and
# fingerprint computed once. A few files: a server's clients mostly run one or two.
PARSED_RULE_FILES = 4
_parsed: OrderedDict[tuple[str, bytes], RuleSet] = OrderedDict()


def load_ruleset(path: str, show_warnings: bool = False) -> RuleSet:
    import hashlib

    from farm.inputs import RULES, read_input_text

    text = read_input_text(path, RULES)
    key = (path, hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest())
    ruleset = _parsed.get(key)
    if ruleset is None:
        ruleset = _parsed[key] = _checked_rules(path, text)
        if len(_parsed) > PARSED_RULE_FILES:
            _parsed.popitem(last=False)
    _parsed.move_to_end(key)
    if ruleset.warnings:
        if show_warnings:
            for w in ruleset.warnings:
                say(f": {path}: {w.message}", lead="warning", style="yellow")
        else:
            kinds = sorted({w.kind for w in ruleset.warnings})
            say(f" ({', '.join(kinds)}); --warnings lists them", lead=f"{len(ruleset.warnings)} rule warning(s)",
                style="yellow")
    return ruleset


def _checked_rules(path: str, text: str) -> RuleSet:
    from farm.lang.dsl import parse_rules
    from farm.lang.transduce import transduce_patterns

    rule_file = parse_rules(text, path)
    return transduce_patterns(rule_file.patterns, rule_file.declared_ops, warn=False)


def pattern_id(path: str) -> str:
    """The rule file's name without its suffix. A name that is not UTF-8 reaches Python with its stray bytes as
    lone surrogates, which no index takes: they become `\\xe9` escapes (`r\\xe9gles` for a Latin-1 `règles`)."""
    return os.fsencode(Path(path).stem).decode("utf-8", "backslashreplace")


def output_file(name: str) -> Path:
    """A file the user named for output: its directory must already exist, so that a typo in the path is
    reported rather than silently creating a tree of directories."""
    path = Path(name)
    if not path.parent.is_dir():
        problem = "is not a directory" if path.parent.exists() else "does not exist"
        raise OutputPathError(f"cannot write {name}: the directory {path.parent} {problem}")
    if path.is_dir():
        raise OutputPathError(f"cannot write {name}: it is a directory")
    return path


def write_output(path: Path, data: bytes) -> None:
    """Replace a regular file atomically; write through anything else (/dev/stdout, a FIFO, a device), which a
    rename would replace by a file."""
    from farm.files import atomic_write

    if _is_special(path):
        _write_through(path, data)
    else:
        atomic_write(path, data)


def _is_special(path: Path) -> bool:
    """Whether an output path exists as something other than a regular file (symlinks followed)."""
    try:
        return not path.is_file() and path.exists()
    except OSError:
        return False


def _write_through(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as stream:
            stream.write(data)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from None


def print_normal_forms(result: RewriteResult) -> int:
    """One line per term, its normal form or `error: ...`; the number of errors. A normal form printed in full
    may take FARM_MAX_MEMORY characters (a shared subterm prints at every use: 51 nodes can print as 2^50)."""
    from farm.config import max_memory_from_env
    from farm.errors import NonTermination
    from farm.semantics import mebibytes

    failed = 0
    limit = max_memory_from_env()  # 0: no limit
    for outcome in result.outcomes:
        if isinstance(outcome, NonTermination):
            failed += 1
            print(f"error: {outcome}")
        elif limit and (length := result.graph.text_length(outcome)) > limit:
            failed += 1
            print(f"error: the normal form shares subterms, and printed in full it is {length:,} characters, past the "
                  f"memory cap FARM_MAX_MEMORY={limit} ({mebibytes(limit)}); raise FARM_MAX_MEMORY to print it")
        else:
            _print_text(result.graph.iter_text(outcome))
    return failed


def _print_text(pieces: Iterable[str]) -> None:
    """Write a term's text as it is produced, a chunk at a time (a term shared many times over prints far longer
    than it is in memory), then a newline."""
    chunk: list[str] = []
    size = 0
    for piece in pieces:
        chunk.append(piece)
        size += len(piece)
        if size >= 1 << 16:
            sys.stdout.write("".join(chunk))
            chunk, size = [], 0
    chunk.append("\n")
    sys.stdout.write("".join(chunk))
