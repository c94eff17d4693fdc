"""The `farm` command's entry: a thin client that hands a command to a running `farm server` when there is one, and
otherwise runs it in this process, exactly as `farm.cli.main` does, then starts a server for the next command.

A new Python process that imports farm and rewrites a file pays some 60 ms before its first rewrite step; a server
holding farm imported and the rule libraries loaded answers the same command in a few. This module imports only
what finding and asking the server takes (farm.locations, farm.rendezvous: os, struct, zlib, marshal; socket when
there is a socket to ask), sccache-style: the first command the server could have run, run here for want of one,
starts one in the background (not waited for: this command is done), which exits after its idle timeout.

A command goes to the server when it is one the server runs (SERVED), reads no standard input (`-`), FARM_SERVER
is not `off`, and a server of this user, cache directory, interpreter, PATH and farm code listens. Anything else (no
server, a refusal, a server of older code, a broken connection before the first byte of output) and the command
runs here. FARM_SERVER: `auto` (the default) also starts a server when none listened, or the one there was of other
code (it exits); `manual` never starts one (`farm server start` does); `off` never asks one."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from farm import locations, rendezvous

SERVED = ("rewrite",)
MODES = ("auto", "manual", "off")  # FARM_SERVER's values; unset is auto
ERROR, INTERRUPTED = 2, 130  # farm.cli.common's EXIT_ERROR and EXIT_INTERRUPTED, which cost farm.cli's imports
CONNECT_TIMEOUT = 0.5  # seconds: a server whose queue of connections stays full that long is wedged
# Why a command was not served: no server answered it (none listens, or one of other code, which exits: a new one
# may start), or one declined it (a refusal, a configuration unread here: none should start)
ABSENT, DECLINED = "absent", "declined"


def main() -> int:
    """Run this process's command line, on the server when one can take it; the exit code."""
    argv = sys.argv[1:]
    mode = os.environ.get("FARM_SERVER", "").strip().lower() or "auto"
    if mode not in MODES:
        return _error(f"FARM_SERVER is {mode!r}; expected one of {', '.join(MODES)} (unset: auto)")
    unserved = None
    if mode != "off" and served(argv):
        answer = ask_server(argv)
        if isinstance(answer, int):
            return answer
        unserved = answer
    from farm.cli import main as run_here

    code = run_here()
    if unserved == ABSENT and mode == "auto":
        start_server()
    return code


def start_server() -> None:
    """Start a server for the next command, in the background; a failure is only logged (this command is done).
    farm.cli has been imported by now: farm.server costs little more."""
    from farm.errors import FarmError
    from farm.server import spawn

    cache_dir = locations.cache_dir(os.environ)
    if cache_dir is None:
        return
    try:
        spawn(cache_dir)
    except (OSError, FarmError) as exc:
        import logging

        logging.getLogger("farm").debug("could not start a farm server: %s", exc)


def served(argv: list[str]) -> bool:
    """Whether the server may run this command line: a served command (after -v at most), no input from stdin."""
    command = next((arg for arg in argv if arg not in ("-v", "--verbose")), None)
    return command in SERVED and "-" not in argv


def ask_server(argv: list[str]) -> int | str:
    """The command's exit code, its output written here as the server wrote it; or why the server did not take it,
    ABSENT or DECLINED (the caller runs it)."""
    try:
        conn = _connect_and_send(argv)
    except (FileNotFoundError, ConnectionRefusedError):  # no socket, or a dead server's
        return ABSENT
    except (OSError, rendezvous.Unsafe):  # a wedged server, or a socket directory not private to this user
        return DECLINED
    if conn is None:
        return DECLINED
    try:
        return relay(conn)
    except KeyboardInterrupt:  # as farm.cli.main says it; the server finishes the command, its output dropped
        sys.stderr.write("farm: interrupted\n")
        return INTERRUPTED
    finally:
        conn.close()


def _connect_and_send(argv: list[str]) -> Any:
    """A connection to the server that has the request; None when the configuration cannot be read here."""
    cache_dir = locations.cache_dir(os.environ)
    if cache_dir is None:
        return None
    # _socket, not socket: the wrapper module costs a new process some 2.5 ms (selectors, enum classes) and adds
    # nothing a connect, a send and recv need
    import _socket

    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.settimeout(CONNECT_TIMEOUT)
        conn.connect(rendezvous.socket_path(cache_dir))
        conn.settimeout(None)  # a command may run for long
        conn.sendall(rendezvous.frame(rendezvous.REQUEST, rendezvous.encode(request(argv, cache_dir))))
    except BaseException:
        conn.close()
        raise
    return conn


def request(argv: list[str], cache_dir: str) -> dict[str, object]:
    """What the server needs to run the command as this process would."""
    env = {name: value for name, value in os.environ.items() if rendezvous.forwarded(name)}
    terminals = [_isatty(sys.stdout), _isatty(sys.stderr)]
    if any(terminals) and "COLUMNS" not in env:  # the server has no terminal to measure: this one's width
        with contextlib.suppress(OSError):
            env["COLUMNS"] = str(os.get_terminal_size(1 if terminals[0] else 2).columns)
    return {"protocol": rendezvous.PROTOCOL, "stamp": rendezvous.code_stamp(), "cache_dir": os.path.abspath(cache_dir),
            "path": os.environ.get("PATH", ""), "argv": argv, "cwd": os.getcwd(), "env": env, "terminals": terminals,
            "encodings": [_encoding(sys.stdout), _encoding(sys.stderr)]}


def relay(conn: Any) -> int | str:
    """Write the server's output frames to stdout and stderr as they come; the exit code at the end. ABSENT or
    DECLINED when the server went away (or is of other code), or refused, before any output; a connection lost
    after some output is an error here (running the command again would repeat that output)."""
    started = False
    while True:
        try:
            kind, payload = rendezvous.read_frame(conn)
        except (OSError, ValueError):
            return ABSENT if not started else _error("the farm server closed the connection before the command "
                                                     "finished")
        if kind == rendezvous.EXIT:
            return int(payload)
        if kind not in (rendezvous.OUT, rendezvous.ERR):  # REFUSED, STALE: the command runs here
            if not started:
                return ABSENT if kind == rendezvous.STALE else DECLINED
            return _error(f"the farm server stopped the command: {payload!r}")
        stream = sys.stdout if kind == rendezvous.OUT else sys.stderr
        try:
            stream.flush()
            stream.buffer.write(payload)
            stream.buffer.flush()
        except OSError as exc:  # e.g. `farm rewrite ... | head -1`: as farm.cli.main reports it
            return _error(exc.strerror or str(exc))
        started = True


def _error(message: str) -> int:
    """One line, as farm.cli.main writes an error, and its exit code."""
    with contextlib.suppress(OSError):
        sys.stderr.write(f"farm: error: {message}\n")
    return ERROR


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _encoding(stream: object) -> list[str]:
    return [getattr(stream, "encoding", None) or "utf-8", getattr(stream, "errors", None) or "strict"]
