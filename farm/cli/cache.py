"""`farm cache ls|show|gc|clear`: what the caches hold and keeping them within bounds. Each reads the configured
tiers through farm/cache/inventory.py; `--json` prints machine output on stdout instead of a table."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from farm.cli.common import EXIT_OK, Command, Group, add_json, checked, print_json
from farm.cli.console import out, say

if TYPE_CHECKING:
    from farm.cache.gc import GcReport
    from farm.cache.inventory import Shown
    from farm.config import FarmConfig


def _config() -> FarmConfig:
    from farm.config import FarmConfig

    return FarmConfig.from_env()


def _add_shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared", action="store_true",
                        help="the cluster's tier (the Redis index and the S3 store) instead of this host's cache "
                             "directory")


class _List(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        from dataclasses import asdict

        from farm.cache.inventory import listing

        entries = listing(_config())
        if args.json:
            print_json([{**asdict(entry), "last_used": entry.last_used} for entry in entries])
            return EXIT_OK
        count = f"{len(entries)} artifact{'' if len(entries) == 1 else 's'}"
        table = Table(title="farm cache", caption=f"{count}, {human_bytes(sum(e.size for e in entries))}")
        for column in ("key", "target", "size", "built", "last hit"):
            table.add_column(column, justify="right" if column == "size" else "left")
        for entry in entries:
            table.add_row(entry.key[:16], escape(entry.target), human_bytes(entry.size), ago(entry.created_at),
                          ago(entry.last_hit))
        out().print(table)
        return EXIT_OK


class _Show(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("query", metavar="KEY|PATTERN")
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.inventory import describe

        shown = describe(_config(), args.query)
        if args.json:
            print_json([item.to_json() for item in shown])
            return EXIT_OK
        if not shown:
            say(f"no artifact has a key starting with, or a pattern ID of, {args.query!r}: a request for that pattern "
                "builds it")
        for item in shown:
            out().print(_shown_table(item))
        return EXIT_OK


def _shown_table(item: Shown) -> Table:
    table = Table(title=f"artifact {item.key}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    meta, entry = item.meta, item.entry
    rows: list[tuple[str, str]] = [("patterns", ", ".join(f"{p} ({t})" for p, t in item.patterns) or "-")]
    if meta is not None:
        rows += [("target", f"{meta.target} ({meta.triple}, cpu {meta.cpu})"), ("-O", str(meta.opt_level)),
                 ("built by pattern", ", ".join(meta.pattern_ids)), ("sha256", meta.sha256),
                 ("toolchain", ", ".join(f"{k}: {v}" for k, v in sorted(meta.toolchain.items()))),
                 ("signed", meta.signature.rsplit(":", 1)[0] if meta.signature else "no"),
                 ("objects compiled / reused", f"{meta.objects_compiled} / {meta.objects_reused}")]
    if entry is not None:
        rows += [("size", human_bytes(entry.size)), ("built", when(entry.created_at)),
                 ("last hit", when(entry.last_hit))]
    rows += [("in the store", "yes" if item.stored else "no"), ("a request", item.miss or "hits")]
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


def _add_bounds(parser: argparse.ArgumentParser) -> None:
    from farm.config import duration, size

    parser.add_argument("--max-size", type=checked(size), metavar="SIZE",
                        help="evict the least recently used until at most SIZE bytes are left (K, M, G, T suffixes; "
                             "default for the local tier: FARM_CACHE_SIZE, 10G)")
    parser.add_argument("--older-than", type=checked(duration), metavar="DURATION",
                        help="evict what was last used longer ago than this (seconds, or with s, m, h, d, w: 7d)")


class _Collect(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _add_bounds(parser)
        _add_shared(parser)
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.inventory import collect

        _report(collect(_config(), args.shared, args.max_size, args.older_than), args.json)
        return EXIT_OK


class _Clear(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _add_shared(parser)
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.inventory import clear

        _report(clear(_config(), args.shared), args.json)
        return EXIT_OK


def _report(report: GcReport, as_json: bool) -> None:
    if as_json:
        print_json(report.to_json())
        return
    table = Table(title=f"farm cache gc ({report.tier} tier)", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in (("size before", human_bytes(report.bytes_before)),
                        ("size after", human_bytes(report.bytes_after)),
                        ("artifacts evicted", f"{report.artifacts_evicted:,}"),
                        ("compiled objects evicted", f"{report.objects_evicted:,}"),
                        ("index entries without files removed", f"{report.entries_repaired:,}"),
                        ("kept: used in the last minute", f"{report.kept_in_use:,}")):
        table.add_row(name, value)
    out().print(table)


# `farm cache`'s actions, in the order its help lists them.
ACTIONS: dict[str, tuple[type[Command], str]] = {
    "ls": (_List, "the indexed artifacts, least recently used first"),
    "show": (_Show, "artifacts by key (or its first 6+ hex digits) or pattern ID: metadata, size, last hit, why a "
                    "request would miss"),
    "gc": (_Collect, "evict the least recently used (whatever was used in the last minute stays)"),
    "clear": (_Clear, "remove every artifact and compiled object (requests rebuild them)"),
}


class Cache(Group):
    actions = ACTIONS


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def ago(moment: float | None) -> str:
    """How long ago, in the largest unit that fits: 40s, 12m, 3.5h, 2.0d."""
    if moment is None:
        return "never"
    seconds = max(time.time() - moment, 0.0)
    for unit, size, fmt in (("s", 1, "{:.0f}"), ("m", 60, "{:.0f}"), ("h", 3600, "{:.1f}"), ("d", 86400, "{:.1f}")):
        if seconds < size * (60 if unit in "sm" else 48) or unit == "d":
            return f"{fmt.format(seconds / size)}{unit} ago"
    raise AssertionError("unreachable")


def when(moment: float | None) -> str:
    """The local date and time, and how long ago."""
    if moment is None:
        return "never"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(moment))} ({ago(moment)})"
