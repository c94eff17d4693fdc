"""Commands that show the farm's figures: `stats` (once), `top` (live, with rates) and `exporter` (to Prometheus).
All three read the same counters, from Redis on a cluster or the local index otherwise."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from farm.cli.common import EXIT_OK, Command, add_json, duration, port_number, print_json, whole_number
from farm.cli.console import out, say

if TYPE_CHECKING:
    from farm.cache.metrics import Snapshot


def stats_table(snap: Snapshot, title: str, previous: Snapshot | None = None, seconds: float = 0.0) -> Table:
    """The figures the exporter serves, as a table; with a previous snapshot, rates as well."""
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    if previous is not None:
        table.add_column("per second", justify="right")

    blank = [""] if previous is not None else []

    def row(name: str, value: float, counter: str | None = None, fmt: str = "{:,.0f}") -> None:
        cells = [name, fmt.format(value)]
        if previous is not None:
            cells.append(f"{(value - previous.get(counter)) / seconds:,.2f}" if counter and seconds else "")
        table.add_row(*cells)

    row(f"requests ({snap.tier} tier)", snap.get("hits") + snap.get("misses"))
    row("hits", snap.get("hits"), "hits")
    row("misses", snap.get("misses"), "misses")
    table.add_row("hit rate", "n/a" if math.isnan(snap.hit_rate) else f"{snap.hit_rate:.1%}", *blank)
    if snap.tier == "shared":
        row("local-tier hits (node caches)", snap.get("local_hits"), "local_hits")
    row("compilations ok", snap.get("compilations_ok"), "compilations_ok")
    row("compilations failed", snap.get("compilations_failed"), "compilations_failed")
    for (target, result), value in sorted(snap.compilations.items()):
        row(f"  {target} {result}", value, f"compilations_{result}:{target}")
    for (stage, target), hist in sorted(snap.histograms.items()):
        table.add_row(f"  {stage} on {target}: p50 / p95 ms ({int(hist.count)} runs)",
                      f"{hist.quantile(0.5) * 1000:.1f} / {hist.quantile(0.95) * 1000:.1f}", *blank)
    row("fallbacks to the interpreter", snap.get("fallbacks"), "fallbacks")
    row("artifacts stored", snap.artifacts)
    row("artifact bytes stored", snap.get("artifact_bytes_stored"), "artifact_bytes_stored")
    row("artifact bytes pulled", snap.get("artifact_bytes_pulled"), "artifact_bytes_pulled")
    if snap.tier == "shared":
        row("in-flight compilations", snap.inflight)
        for target, depth in snap.queue_depth.items():
            row(f"queue depth {target} ({snap.live_workers.get(target, 0)} live workers)", depth)
        row("redeliveries", snap.get("redeliveries"), "redeliveries")
        row("dead letters", snap.get("dead_letters"), "dead_letters")
        for pattern, score in snap.hot[:5]:
            table.add_row(f"hot: {escape(pattern)}", f"{score:,.0f}", *blank)
    return table


def _snapshot_source() -> tuple[Callable[[], Snapshot], str]:
    """A function taking a snapshot of the configured index, and where that index is."""
    from farm.cache.backends import make_index
    from farm.cache.metrics import snapshot
    from farm.config import FarmConfig, masked

    config = FarmConfig.from_env()
    index = make_index(config)
    where = masked(config.redis_url) if config.redis_url else str(config.cache_dir)
    return (lambda: snapshot(index)), where


class Stats(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_json(parser)
        parser.add_argument("--zero", action="store_true",
                            help="start the counters again from zero (what the caches hold is not a counter and stays)")

    def run(self, args: argparse.Namespace) -> int:
        if args.zero:
            from farm.cache.inventory import zero_stats
            from farm.config import FarmConfig

            config = FarmConfig.from_env()
            zero_stats(config)
            where = "the cluster's Redis" if config.redis_url else str(config.cache_dir)
            say(f"farm statistics zeroed ({where})")
            return EXIT_OK
        take, where = _snapshot_source()
        snap = take()
        if args.json:
            print_json({"index": where, **snap.to_dict()})
        else:
            out().print(stats_table(snap, f"farm statistics ({escape(where)})"))
        return EXIT_OK


class Top(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--interval", type=duration(), default=2.0, metavar="SECONDS",
                            help="seconds between refreshes")
        parser.add_argument("--iterations", type=whole_number(0), default=0, metavar="N",
                            help="stop after N refreshes (0: until Ctrl-C)")

    def run(self, args: argparse.Namespace) -> int:
        from rich.live import Live

        take, where = _snapshot_source()
        previous, last = take(), time.monotonic()
        with Live(stats_table(previous, f"farm top ({escape(where)})", previous, 0.0), console=out(),
                  refresh_per_second=4, transient=False) as live:
            shown = 0
            while args.iterations == 0 or shown < args.iterations:
                time.sleep(args.interval)
                now, current = time.monotonic(), take()
                live.update(stats_table(current, f"farm top ({escape(where)}), every {args.interval:g} s", previous,
                                        now - last))
                previous, last, shown = current, now, shown + 1
        return EXIT_OK


class Exporter(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=port_number(), default=9108, metavar="PORT",
                            help="TCP port of /metrics (0: any free one)")
        parser.add_argument("--host", default="0.0.0.0", help="address to listen on")

    def run(self, args: argparse.Namespace) -> int:
        import signal

        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.process_collector import ProcessCollector

        from farm.cache.backends import make_index
        from farm.cache.metrics import FarmCollector
        from farm.config import FarmConfig

        registry = CollectorRegistry()
        registry.register(FarmCollector(make_index(FarmConfig.from_env())))
        ProcessCollector(registry=registry)
        # Blocked in every thread (the server's threads inherit the mask) so that sigwait, not a handler, takes them.
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        try:
            server, _ = start_http_server(args.port, addr=args.host, registry=registry)
            say(f"farm exporter serving http://{args.host}:{server.server_port}/metrics")
            received = signal.sigwait(stop)
            server.shutdown()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)
        if received == signal.SIGINT:
            raise KeyboardInterrupt
        return EXIT_OK  # SIGTERM: an orderly stop
