"""The `farm` command. Each subcommand returns an exit code; errors become one clear line (traceback with -v)."""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from farm.cache.metrics import Snapshot
from farm.errors import FarmError, OutputPathError
from farm.inputs import TERMS, read_input_text

if TYPE_CHECKING:
    from farm.config import FarmConfig
    from farm.semantics.interp import RewriteResult

out = Console()
err = Console(stderr=True)
# 2: bad input or usage (argparse's own code too); 130: interrupted (128 + SIGINT, as shells report it)
EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
T = TypeVar("T")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False)


def _load_ruleset(path: str, show_warnings: bool = False):  # type: ignore[no-untyped-def]
    from farm.lang.dsl import load_rules
    from farm.lang.transduce import transduce_patterns

    rule_file = load_rules(path)
    ruleset = transduce_patterns(rule_file.patterns, rule_file.declared_ops, warn=False)
    if ruleset.warnings:
        if show_warnings:
            for w in ruleset.warnings:
                err.print(f"[yellow]warning[/]: {escape(path)}: {escape(w.message)}", highlight=False)
        else:
            kinds = sorted({w.kind for w in ruleset.warnings})
            err.print(f"[yellow]{len(ruleset.warnings)} rule warning(s)[/] ({', '.join(kinds)}); "
                      "--warnings lists them", highlight=False)
    return ruleset


def _pattern_id(path: str) -> str:
    """The rule file's name without its suffix. A name that is not UTF-8 reaches Python with its stray bytes as
    lone surrogates, which no index takes: they become `\\xe9` escapes (`r\\xe9gles` for a Latin-1 `règles`)."""
    import os

    return os.fsencode(Path(path).stem).decode("utf-8", "backslashreplace")


def _output_file(name: str) -> Path:
    """A file the user named for output: its directory must already exist, so that a typo in the path is
    reported rather than silently creating a tree of directories."""
    path = Path(name)
    if not path.parent.is_dir():
        problem = "is not a directory" if path.parent.exists() else "does not exist"
        raise OutputPathError(f"cannot write {name}: the directory {path.parent} {problem}")
    if path.is_dir():
        raise OutputPathError(f"cannot write {name}: it is a directory")
    return path


def _is_special(path: Path) -> bool:
    """Whether an output path exists as something other than a regular file (symlinks followed)."""
    try:
        return not path.is_file() and path.exists()
    except OSError:
        return False


def _write_through(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as out:
            out.write(data)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from None


def _add_opt_level(parser: argparse.ArgumentParser) -> None:
    """-O of every command that compiles: one definition, so their defaults cannot drift apart."""
    parser.add_argument("-O", dest="opt", type=int, choices=range(4), default=None,
                        help="optimisation level (default: FARM_OPT_LEVEL from the environment or FARM_CONFIG, else 2)")


def _opt_level(args: argparse.Namespace, config: FarmConfig) -> int:
    """-O if given, else the configuration's level (FARM_OPT_LEVEL or the config file)."""
    return config.opt_level if args.opt is None else args.opt


def cmd_compile(args: argparse.Namespace) -> int:
    from farm.cache.engine import CompileJob, Engine

    ruleset = _load_ruleset(args.rules, args.warnings)
    engine = Engine()
    opt = _opt_level(args, engine.config)
    targets = args.target or [engine.config.target]
    results = []
    if len(targets) == 1:
        results.append((targets[0], engine.compile(ruleset, _pattern_id(args.rules), targets[0], opt)))
    else:
        jobs = [CompileJob(ruleset, _pattern_id(args.rules), t, opt) for t in targets]
        with _progress() as bar:
            task = bar.add_task("compiling", total=len(jobs))
            for job, result in engine.compile_many(jobs):
                if isinstance(result, FarmError):
                    raise result
                results.append((job.target, result))
                bar.advance(task)
    table = Table(title=f"{args.rules}: {len(ruleset.rules)} rules, -O{opt}, stage times in ms")
    table.add_column("target")
    for stage in ("llvm-as", "opt", "llc", "as", "ld"):
        table.add_column(stage, justify="right")
    table.add_column("total", justify="right")
    table.add_column("cache")
    table.add_column("size", justify="right")
    for target, art in results:
        s = art.meta.stage_seconds
        table.add_row(target, *(f"{s.get(k, 0) * 1000:.1f}" for k in ("llvm-as", "opt", "llc", "as", "ld")),
                      f"{sum(s.values()) * 1000:.1f}", f"hit ({art.seconds * 1000:.1f} ms)" if art.cached else "built",
                      f"{art.meta.size:,}")
    for _, art in results:
        print(art.path)
    err.print(table)
    return EXIT_OK


def _print_normal_forms(result: RewriteResult) -> int:
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


def cmd_rewrite(args: argparse.Namespace) -> int:
    from farm.cache.engine import Engine
    from farm.lang.terms import TermGraph

    ruleset = _load_ruleset(args.rules, args.warnings)
    graph = TermGraph(ruleset.make_signature())
    roots = graph.parse(read_input_text(args.terms, TERMS), args.terms)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Engine().rewrite(ruleset, graph, roots, _pattern_id(args.rules), args.fuel, args.engine,
                                  args.target)
    for w in caught:
        err.print(f"[yellow]warning[/]: {escape(str(w.message))}", highlight=False)
    elapsed = time.perf_counter() - start
    failed = _print_normal_forms(result)
    err.print(f"{len(roots)} term(s) rewritten by the {result.engine} in {elapsed * 1000:.1f} ms, "
              f"{sum(result.firings)} rule firings", highlight=False)
    if args.stats:
        table = Table(title="rule firings")
        table.add_column("rule")
        table.add_column("firings", justify="right")
        for rule, count in sorted(zip(ruleset.rules, result.firings), key=lambda p: -p[1]):
            if count:
                table.add_row(rule.name, f"{count:,}")
        err.print(table)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from farm.cache.engine import Engine, load_native
    from farm.runtime.verify import VerifyReport, differential

    ruleset = _load_ruleset(args.rules, args.warnings)
    native = None
    if args.engine != "interpreter":
        engine = Engine()
        native = load_native(ruleset, engine.compile(ruleset, _pattern_id(args.rules), args.target),
                             engine.builder.trusted)
    report = VerifyReport()
    batch = max(1, min(500, args.cases))
    with _progress() as bar:
        task = bar.add_task("verifying", total=args.cases)
        seed = args.seed
        while report.cases < args.cases:
            n = min(batch, args.cases - report.cases)
            differential(ruleset, native, n, seed, args.fuel, report)
            seed += 1
            bar.advance(task, n)
    table = Table(title=f"differential check of {args.rules}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in [("random cases", report.cases), ("checked against the oracle", report.oracle_checked),
                        ("non-terminating (fuel)", report.nonterminating), ("rule firings", report.firings),
                        ("engines", "native, interpreter, oracle" if native else "interpreter, oracle"),
                        ("mismatches", len(report.mismatches))]:
        table.add_row(name, f"{value:,}" if isinstance(value, int) else value)
    err.print(table)
    for line in report.mismatches[:20]:
        print(f"MISMATCH {line}")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_codegen(args: argparse.Namespace) -> int:
    from farm.compiler.codegen.llvm import generate_llvm_ir
    from farm.compiler.codegen.qasm import generate_qasm
    from farm.compiler.codegen.rust import generate_rust
    from farm.files import atomic_write

    output = _output_file(args.output) if args.output else None  # before the work, not after
    ruleset = _load_ruleset(args.rules, args.warnings)
    emitters = {"llvm": generate_llvm_ir, "rust": lambda rs: generate_rust(rs, args.main), "qasm": generate_qasm}
    text = emitters[args.lang](ruleset)
    if args.lang == "llvm":  # what docs/rules.md ("Memo") says codegen shows, as IR comments
        from farm.semantics.callgraph import memoised_ops, tracked_ops

        text = "".join(f"; {kind} operators (docs/rules.md, \"Semantics\"): {', '.join(sorted(ops)) or 'none'}\n"
                       for kind, ops in (("memoised", memoised_ops(ruleset)), ("tracked", tracked_ops(ruleset)))) + text
    if output:
        if _is_special(output):  # /dev/stdout, a FIFO, a device: written to, never replaced by a file
            _write_through(output, text.encode())
        else:
            atomic_write(output, text.encode())
        err.print(f"wrote {escape(args.output)} ({len(text):,} bytes of {args.lang})", highlight=False)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
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
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in REGISTRY]
    if not targets or unknown:
        raise FarmError(f"--targets takes registered target names ({', '.join(REGISTRY)}); got {args.targets!r}")
    os.environ["FARM_WORKER_TARGETS"] = ",".join(targets)
    if args.metrics_port:
        os.environ["FARM_METRICS_PORT"] = str(args.metrics_port)
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", ",".join(map(keys.queue, targets)),
            "-c", str(args.concurrency), "-n", f"farm-{'-'.join(targets)}-{os.getpid()}@%h",
            "--loglevel", args.loglevel, "--without-gossip", "--without-mingle"]
    os.execv(sys.executable, argv)
    return EXIT_ERROR  # not reached


def cmd_keygen(args: argparse.Namespace) -> int:
    from farm.cache.signing import write_key_pair

    pair = write_key_pair(Path(args.output))
    print(f"private key: {pair.private_path}  (mode 0600: builders only, as FARM_SIGNING_KEY)")
    print(f"public key:  {pair.public_path}  (every node, as FARM_VERIFY_KEY)")
    print(f"key id:      {pair.key_id}")
    return EXIT_OK


def cmd_prewarm(args: argparse.Namespace) -> int:
    from farm.cluster.coordinator import CompileRequest, Outcome
    from farm.cluster.messages import Status
    from farm.config import FarmConfig
    from farm.lang.dsl import load_rules
    from farm.lang.transduce import transduce_patterns
    from workers.app import make_coordinator

    parsed = load_rules(args.hot_list)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    coordinator = make_coordinator(FarmConfig.from_env())
    opt = _opt_level(args, coordinator.config)
    requests = []
    for pattern in parsed.patterns:  # each rule of the hot list is one pattern, compiled on its own
        ruleset = transduce_patterns([pattern], parsed.declared_ops, warn=False)
        requests += [CompileRequest.for_ruleset(pattern.name, ruleset, t, opt) for t in targets]
    start = time.perf_counter()
    with _progress() as bar:
        task = bar.add_task(f"pre-warming {len(parsed.patterns)} patterns x {len(targets)} targets",
                            total=len(requests))
        outcomes = coordinator.ensure(requests, args.timeout, lambda _: bar.advance(task))
    elapsed = time.perf_counter() - start
    table = Table(title=f"pre-warm of {args.hot_list} in {elapsed:.1f} s")
    for col in ("target", "compiled", "already cached", "failed", "dead-lettered"):
        table.add_column(col, justify="right")
    by_target: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_target.setdefault(o.request.target, []).append(o)
    for target, rows in by_target.items():
        order = (Status.COMPILED, Status.CACHED, Status.FAILED, Status.DEAD_LETTER)
        table.add_row(target, *(str(sum(o.status == s for o in rows)) for s in order))
    err.print(table)
    failures = [o for o in outcomes if o.status not in (Status.COMPILED, Status.CACHED)]
    for o in failures[:10]:
        err.print(f"[red]failed[/]: {escape(o.request.pattern_id)} on {o.request.target}: {escape(o.error)}",
                  highlight=False)
    return EXIT_FAILED if failures else EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    from farm.cache.backends import make_index
    from farm.cache.counting import best_effort
    from farm.cache.pull import pull
    from farm.config import FarmConfig

    config = FarmConfig.from_env()
    result = pull(args.pattern_id, config, args.target)
    table = Table(title=f"pulled {args.pattern_id}")
    table.add_column("field")
    table.add_column("value")
    for name, value in [("target", result.meta.target), ("cpu", result.meta.cpu), ("key", result.meta.key),
                        ("sha256", f"{result.meta.sha256} (verified)"),
                        ("signature", "verified" if result.signature_checked else "not configured"),
                        ("bytes", f"{result.meta.size:,}"), ("local path", str(result.path)),
                        ("rules", str(len(result.native.ruleset.rules)) if result.native else "IR only")]:
        table.add_row(name, value)
    err.print(table)
    print(result.path)
    if args.rewrite:
        if result.native is None:
            raise FarmError("this artifact carries no ruleset; it cannot rewrite terms")
        from farm.lang.terms import TermGraph

        graph = TermGraph(result.native.ruleset.make_signature())
        roots = graph.parse(read_input_text(args.rewrite, TERMS), args.rewrite)
        rewritten = result.native.rewrite(graph, roots)
        best_effort("the hot-pattern count", lambda: make_index(config).note_hot(args.pattern_id,
                                                                             sum(rewritten.firings)))
        _print_normal_forms(rewritten)  # as before, a term's error is its line, not the exit code
    return EXIT_OK


def cmd_hot(args: argparse.Namespace) -> int:
    from farm.cache.backends import make_index
    from farm.cache.index import Coordination
    from farm.config import FarmConfig

    index = make_index(FarmConfig.from_env())
    if not isinstance(index, Coordination):
        raise FarmError("`farm hot` reads the cluster's hot-pattern set; set FARM_REDIS_URL")
    table = Table(title=f"top {args.top} hot patterns (requests + native rule firings)")
    table.add_column("#", justify="right")
    table.add_column("pattern")
    table.add_column("score", justify="right")
    for rank, (pattern, score) in enumerate(index.hot(args.top), 1):
        table.add_row(str(rank), escape(pattern), f"{score:,.0f}")
    out.print(table)
    return EXIT_OK


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
            row(f"queue depth {target}", depth)
        row("redeliveries", snap.get("redeliveries"), "redeliveries")
        row("dead letters", snap.get("dead_letters"), "dead_letters")
        for pattern, score in snap.hot[:5]:
            table.add_row(f"hot: {escape(pattern)}", f"{score:,.0f}", *blank)
    return table


def _snapshot_source() -> tuple[Callable[[], Snapshot], str]:
    from farm.cache.backends import make_index
    from farm.cache.metrics import snapshot
    from farm.config import FarmConfig

    config = FarmConfig.from_env()
    index = make_index(config)
    where = config.redis_url or str(config.cache_dir)
    return (lambda: snapshot(index)), where


def cmd_stats(args: argparse.Namespace) -> int:
    take, where = _snapshot_source()
    out.print(stats_table(take(), f"farm statistics ({escape(where)})"))
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    from rich.live import Live

    take, where = _snapshot_source()
    previous, last = take(), time.monotonic()
    with Live(stats_table(previous, f"farm top ({escape(where)})", previous, 0.0), console=out,
              refresh_per_second=4, transient=False) as live:
        shown = 0
        while args.iterations == 0 or shown < args.iterations:
            time.sleep(args.interval)
            now, current = time.monotonic(), take()
            live.update(stats_table(current, f"farm top ({escape(where)}), every {args.interval:g} s", previous,
                                    now - last))
            previous, last, shown = current, now, shown + 1
    return EXIT_OK


def cmd_exporter(args: argparse.Namespace) -> int:
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
        err.print(f"farm exporter serving http://{args.host}:{server.server_port}/metrics", highlight=False)
        received = signal.sigwait(stop)
        server.shutdown()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)
    if received == signal.SIGINT:
        raise KeyboardInterrupt
    return EXIT_OK  # SIGTERM: an orderly stop


def cmd_targets(args: argparse.Namespace) -> int:
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


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "compile": (cmd_compile, "compile a rule file to a shared library"),
    "rewrite": (cmd_rewrite, "rewrite the terms of a file to normal form"),
    "verify": (cmd_verify, "differential check: native == interpreter == oracle on random terms"),
    "codegen": (cmd_codegen, "emit a ruleset as LLVM IR, Rust or OpenQASM 3 text"),
    "stats": (cmd_stats, "cache and compilation statistics"),
    "top": (cmd_top, "a live terminal view of the statistics"),
    "exporter": (cmd_exporter, "serve the farm's metrics to Prometheus"),
    "prewarm": (cmd_prewarm, "cluster: compile every rule of a hot list for some targets, in batches"),
    "pull": (cmd_pull, "cluster: fetch, verify and load the best artifact of a pattern for this host"),
    "hot": (cmd_hot, "cluster: the hottest patterns"),
    "worker": (cmd_worker, "cluster: run a Celery worker for some targets"),
    "targets": (cmd_targets, "list compilation targets"),
    "keygen": (cmd_keygen, "make an Ed25519 key pair: PREFIX.key signs (builders), PREFIX.pub verifies (nodes)"),
}


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from one of farm.config's parsers: a bad value is a usage error saying what is expected."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {exc}") from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    from farm.config import integer, seconds
    from farm.semantics import DEFAULT_FUEL, MAX_FUEL

    count, positive_count, port = _checked(integer(0)), _checked(integer(1)), _checked(integer(0, 65535))
    duration = _checked(seconds(above=0))

    parser = argparse.ArgumentParser(prog="farm", description="Compile term-rewrite rules to native code.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name in ("compile", "rewrite", "verify", "codegen"):
            p.add_argument("rules", help="rule file (see docs/rules.md)")
            p.add_argument("--warnings", action="store_true", help="list rule overlap warnings")
        if name in ("compile", "prewarm"):
            _add_opt_level(p)
        if name == "compile":
            p.add_argument("--target", action="append", help="target name (repeat for several); default native")
        if name == "rewrite":
            p.add_argument("terms", help="file of terms, e.g. (add x 0)")
            p.add_argument("--stats", action="store_true", help="show the rule firing table")
        if name in ("rewrite", "verify"):
            p.add_argument("--target", default=None)
            p.add_argument("--fuel", type=_checked(integer(1, MAX_FUEL)), default=DEFAULT_FUEL if name == "rewrite"
                           else 10_000, help="rewrite steps allowed per term (at least 1)")
            p.add_argument("--engine", choices=("auto", "native", "interpreter"), default="auto")
        if name == "codegen":
            p.add_argument("--lang", choices=("llvm", "rust", "qasm"), default="llvm")
            p.add_argument("--main", action="store_true", help="rust: add a stdin/stdout main (docs/abi.md format)")
            p.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
        if name == "prewarm":
            p.add_argument("hot_list", help="rule file: each rule is one pattern (its name is the pattern ID)")
            p.add_argument("--targets", required=True, help="comma-separated target names")
            p.add_argument("--timeout", type=duration, default=3600.0)
        if name == "pull":
            p.add_argument("pattern_id")
            p.add_argument("--target", help="this target instead of the best one for the host")
            p.add_argument("--rewrite", metavar="TERMS", help="then rewrite this term file with it")
        if name == "top":
            p.add_argument("--interval", type=duration, default=2.0)
            p.add_argument("--iterations", type=count, default=0, help="stop after N refreshes (0: until Ctrl-C)")
        if name == "exporter":
            p.add_argument("--port", type=port, default=9108)
            p.add_argument("--host", default="0.0.0.0")
        if name == "hot":
            p.add_argument("--top", type=positive_count, default=20)
        if name == "worker":
            p.add_argument("--targets", required=True, help="comma-separated target names this host builds")
            p.add_argument("--concurrency", type=positive_count, default=1)
            p.add_argument("--loglevel", default="info")
            p.add_argument("--metrics-port", type=port, default=0, help="serve this worker's process metrics")
        if name == "keygen":
            p.add_argument("-o", "--output", default="farm-signing", metavar="PREFIX",
                           help="write PREFIX.key and PREFIX.pub (never overwritten); default farm-signing")
        if name == "verify":
            p.add_argument("--cases", type=positive_count, default=2000)
            p.add_argument("--seed", type=int, default=1)
    return parser


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
        return COMMANDS[args.command][0](args)
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


if __name__ == "__main__":
    sys.exit(main())
