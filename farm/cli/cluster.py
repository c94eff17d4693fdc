"""Commands for the cluster deployment: `prewarm` (compile a hot list on the workers), `pull` (fetch, verify and
load an artifact), `hot` (the hottest patterns) and `worker` (run a Celery worker for some targets)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from farm.cli.common import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    Command,
    add_json,
    add_opt_level,
    add_targets,
    duration,
    opt_level,
    port_number,
    print_json,
    print_normal_forms,
    progress,
    whole_number,
)
from farm.cli.console import err, out, say
from farm.errors import FarmError
from farm.inputs import TERMS, read_input_text

if TYPE_CHECKING:
    from farm.cache.index import Coordination
    from farm.cache.pull import Pulled
    from farm.cluster.coordinator import Outcome
    from farm.config import FarmConfig




class Prewarm(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_opt_level(parser)
        parser.add_argument("hot_list", help="rule file: each rule is one pattern (its name is the pattern ID)")
        add_targets(parser, required=True, what="what to compile for")
        parser.add_argument("--timeout", type=duration(), default=3600.0, metavar="SECONDS",
                            help="seconds to wait for the whole batch (no live worker for a target fails at once)")
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        from farm.cluster.coordinator import CompileRequest
        from farm.config import FarmConfig
        from farm.lang.dsl import load_rules
        from farm.lang.transduce import transduce_patterns
        from workers.app import make_coordinator

        parsed = load_rules(args.hot_list)
        targets = args.targets
        coordinator = make_coordinator(FarmConfig.from_env())
        opt = opt_level(args, coordinator.config)
        requests = []
        for pattern in parsed.patterns:  # each rule of the hot list is one pattern, compiled on its own
            ruleset = transduce_patterns([pattern], parsed.declared_ops, warn=False)
            requests += [CompileRequest.for_ruleset(pattern.name, ruleset, t, opt) for t in targets]
        start = time.perf_counter()
        with progress() as bar:
            task = bar.add_task(f"pre-warming {len(parsed.patterns)} patterns x {len(targets)} targets",
                                total=len(requests))
            outcomes = coordinator.ensure(requests, args.timeout, lambda _: bar.advance(task))
        elapsed = time.perf_counter() - start
        if args.json:
            print_json(_summary(args.hot_list, elapsed, outcomes))
        else:
            err().print(_outcome_table(f"pre-warm of {args.hot_list} in {elapsed:.1f} s", outcomes))
        return _report_failures(outcomes)


def _summary(hot_list: str, seconds: float, outcomes: list[Outcome]) -> dict[str, object]:
    """`prewarm --json`: per target, how many requests ended in each status; and every failure."""
    by_target: dict[str, dict[str, int]] = {}
    for o in outcomes:
        counts = by_target.setdefault(o.request.target, {})
        counts[str(o.status)] = counts.get(str(o.status), 0) + 1
    return {"hot_list": hot_list, "seconds": round(seconds, 3), "requests": len(outcomes), "targets": by_target,
            "failures": [{"pattern_id": o.request.pattern_id, "target": o.request.target, "status": str(o.status),
                          "error": o.error} for o in outcomes if o.meta is None]}


def _outcome_table(title: str, outcomes: list[Outcome]) -> Table:
    """How many requests of each target ended in each status."""
    from farm.cluster.messages import Status

    table = Table(title=title)
    for col in ("target", "compiled", "already cached", "failed", "dead-lettered"):
        table.add_column(col, justify="right")
    by_target: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_target.setdefault(o.request.target, []).append(o)
    for target, rows in by_target.items():
        order = (Status.COMPILED, Status.CACHED, Status.FAILED, Status.DEAD_LETTER)
        table.add_row(target, *(str(sum(o.status == s for o in rows)) for s in order))
    return table


def _report_failures(outcomes: list[Outcome]) -> int:
    """Print the first failures; the exit code."""
    from farm.cluster.messages import Status

    failures = [o for o in outcomes if o.status not in (Status.COMPILED, Status.CACHED)]
    for o in failures[:10]:
        say(f": {o.request.pattern_id} on {o.request.target}: {o.error}", lead="failed", style="red")
    return EXIT_FAILED if failures else EXIT_OK


class Pull(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pattern_id", help="the pattern ID the artifact was compiled under")
        parser.add_argument("--target", help="this one target instead of the best one for the host")
        parser.add_argument("--rewrite", metavar="TERMS", help="then rewrite this term file with it")

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.pull import pull
        from farm.config import FarmConfig

        config = FarmConfig.from_env()
        result = pull(args.pattern_id, config, args.target)
        err().print(_pulled_table(f"pulled {args.pattern_id}", result))
        print(result.path)
        if args.rewrite:
            _rewrite_with(result, args.pattern_id, args.rewrite, config)
        return EXIT_OK


def _pulled_table(title: str, result: Pulled) -> Table:
    table = Table(title=title)
    table.add_column("field")
    table.add_column("value")
    for name, value in [("target", result.meta.target), ("cpu", result.meta.cpu), ("key", result.meta.key),
                        ("sha256", f"{result.meta.sha256} (verified)"),
                        ("signature", "verified" if result.signature_checked else "not configured"),
                        ("bytes", f"{result.meta.size:,}"), ("local path", str(result.path)),
                        ("rules", str(len(result.native.ruleset.rules)) if result.native else "IR only")]:
        table.add_row(name, value)
    return table


def _rewrite_with(result: Pulled, pattern: str, terms: str, config: FarmConfig) -> None:
    """Rewrite a term file with a pulled artifact, and count its firings towards the pattern's heat."""
    from farm.cache.backends import make_index
    from farm.cache.counting import best_effort
    from farm.lang.terms import TermGraph

    if result.native is None:
        raise FarmError("this artifact carries no ruleset; it cannot rewrite terms")
    graph = TermGraph(result.native.ruleset.make_signature())
    roots = graph.parse(read_input_text(terms, TERMS), terms)
    rewritten = result.native.rewrite(graph, roots)
    best_effort("the hot-pattern count", lambda: make_index(config).note_hot(pattern, sum(rewritten.firings)))
    print_normal_forms(rewritten)  # as before, a term's error is its line, not the exit code


class Hot(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--top", type=whole_number(1), default=20, metavar="N", help="how many patterns")
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        hot = _coordination("hot").hot(args.top)
        if args.json:
            print_json([{"rank": rank, "pattern": pattern, "score": score} for rank, (pattern, score) in
                        enumerate(hot, 1)])
            return EXIT_OK
        table = Table(title=f"top {args.top} hot patterns (requests + native rule firings)")
        table.add_column("#", justify="right")
        table.add_column("pattern")
        table.add_column("score", justify="right")
        for rank, (pattern, score) in enumerate(hot, 1):
            table.add_row(str(rank), escape(pattern), f"{score:,.0f}")
        out().print(table)
        return EXIT_OK


def _coordination(command: str) -> Coordination:
    """The cluster's shared index, for a command that reads what only the cluster keeps."""
    from farm.cache.backends import make_index
    from farm.cache.index import Coordination
    from farm.config import FarmConfig

    index = make_index(FarmConfig.from_env())
    if not isinstance(index, Coordination):
        raise FarmError(f"`farm {command}` reads the cluster's shared index; set FARM_REDIS_URL")
    return index


class Workers(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        from dataclasses import asdict

        workers = _coordination("workers").workers()
        if args.json:
            print_json([asdict(w) for w in workers])
            return EXIT_OK
        table = Table(title=f"{len(workers)} live worker(s)")
        for col in ("worker", "host", "pid", "targets", "llc", "concurrency", "in flight", "up", "last seen"):
            table.add_column(col, justify="right" if col in ("pid", "concurrency", "in flight") else "left")
        now = time.time()
        for w in workers:
            table.add_row(escape(w.name), escape(w.host), str(w.pid), ", ".join(w.targets),
                          escape(w.toolchain.get("llc", "?").removeprefix("llc=")), str(w.concurrency), str(w.inflight),
                          _ago(now - w.started, ""), _ago(now - w.seen, " ago"))
        out().print(table)
        if not workers:
            say("no live worker: start one with `farm worker --targets T` (a worker stopped or silent for 30 s is "
                "not listed)")
        return EXIT_OK


def _ago(seconds: float, suffix: str) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s{suffix}"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min{suffix}"
    return f"{seconds / 3600:.1f} h{suffix}"


class Worker(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_targets(parser, required=True, what="what this host builds")
        parser.add_argument("--concurrency", type=whole_number(1), default=1, metavar="N", help="compile processes")
        parser.add_argument("--loglevel", default="info", help="Celery's log level (debug, info, warning, error)")
        parser.add_argument("--metrics-port", type=port_number(), default=0, metavar="PORT",
                            help="serve this worker's metrics, its pool's included, on this TCP port (0: none)")

    def run(self, args: argparse.Namespace) -> int:
        """Run a Celery worker consuming the queues of the given targets (replaces this process)."""
        import os

        from farm.cache import keys
        from farm.cache.signing import trusted_keys_of
        from farm.cluster.coordinator import require_cluster
        from farm.config import FarmConfig
        from farm.targets import REGISTRY

        config = FarmConfig.from_env()
        require_cluster(config)
        trusted_keys_of(config)  # a bad key file is reported here, not in the log of every task
        import workers.tasks  # noqa: F401 - an absent cluster extra fails here, clearly, not after the exec
        targets = args.targets
        unknown = [t for t in targets if t not in REGISTRY]
        if not targets or unknown:
            raise FarmError(f"--targets takes registered target names ({', '.join(REGISTRY)}); got "
                            f"{','.join(targets)!r}")
        if args.metrics_port:
            os.environ["FARM_METRICS_PORT"] = str(args.metrics_port)
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", ",".join(map(keys.queue, targets)),
                "-c", str(args.concurrency), "-n", f"farm-{'-'.join(targets)}-{os.getpid()}@%h",
                "--loglevel", args.loglevel, "--without-gossip", "--without-mingle"]
        os.execv(sys.executable, argv)
        return EXIT_ERROR  # not reached
