"""`farm server start|stop|status|run`: the local server that runs `farm rewrite` for the `farm` command's thin
client (farm/client.py) without a new process's start-up; farm/server.py is the server."""

from __future__ import annotations

import argparse
from typing import Any

from farm.cli.common import EXIT_FAILED, EXIT_OK, Command, Group, add_json, duration, print_json
from farm.cli.console import forget_consoles, out, say


def _cache_dir() -> str:
    from farm.config import FarmConfig

    return str(FarmConfig.from_env().cache_dir)


def _add_idle_timeout(parser: argparse.ArgumentParser) -> None:
    from farm.server import DEFAULT_IDLE_TIMEOUT

    parser.add_argument("--idle-timeout", type=duration(), default=DEFAULT_IDLE_TIMEOUT, metavar="SECONDS",
                        help="the server exits after this many seconds without a request")


class _Start(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _add_idle_timeout(parser)

    def run(self, args: argparse.Namespace) -> int:
        from farm.server import log_path, start

        cache_dir = _cache_dir()
        status, started = start(cache_dir, args.idle_timeout)
        what = "started" if started else "already running"
        say(f"farm server {what}: pid {status['pid']}, socket {status['socket']}, log {log_path(cache_dir)}")
        return EXIT_OK


class _Stop(Command):
    def run(self, args: argparse.Namespace) -> int:
        from farm.server import stop

        status = stop(_cache_dir())
        say("no farm server is running" if status is None else
            f"farm server stopped: pid {status['pid']}, {status['requests']} request(s) served")
        return EXIT_OK


class _Status(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        from farm.server import ask

        status = ask(_cache_dir(), "status")
        if args.json:
            print_json({"running": False} if status is None else {"running": True, **_shown(status)})
        elif status is None:
            say("no farm server is running")
        else:
            out().print(_status_table(status))
        return EXIT_FAILED if status is None else EXIT_OK


def _shown(status: dict[str, Any]) -> dict[str, Any]:
    """The status as --json prints it: libraries as objects."""
    libraries = [dict(zip(("fingerprint", "target", "opt_level", "path"), library)) for library in status["libraries"]]
    return {**status, "libraries": libraries}


def _status_table(status: dict[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from farm.cli.cache import ago

    table = Table(title="farm server", show_header=False)
    table.add_column("measure")
    table.add_column("value", overflow="fold")  # a path whole, over several lines if it must
    for name, value in [("pid", status["pid"]), ("socket", status["socket"]), ("cache directory", status["cache_dir"]),
                        ("started", ago(status["started"])), ("uptime", f"{status['uptime']:.0f} s"),
                        ("idle timeout", f"{status['idle_timeout']:g} s"), ("requests served", status["requests"]),
                        ("libraries held", len(status["libraries"]))]:
        table.add_row(name, escape(str(value)))
    for fingerprint, target, opt, path in status["libraries"]:
        table.add_row("", escape(f"{fingerprint[:12]} {target} -O{opt} {path}"))
    return table


class _Run(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _add_idle_timeout(parser)

    def run(self, args: argparse.Namespace) -> int:
        from farm.server import serve

        serve(_cache_dir(), run_command, args.idle_timeout)
        return EXIT_OK


def run_command(argv: list[str]) -> int:
    """One client's command, in the server: as `farm` would run it, with consoles made for its streams."""
    from farm.cli import main

    forget_consoles()
    try:
        return main(argv)
    finally:
        forget_consoles()


class Server(Group):
    actions = {
        "start": (_Start, "start the server in the background (it exits after --idle-timeout without a request)"),
        "stop": (_Stop, "stop the server (it finishes the command it is running)"),
        "status": (_Status, "the server's pid, socket, uptime, requests served and libraries held"),
        "run": (_Run, "run the server in the foreground (what `start` runs)"),
    }
