"""`farm server`: a long-lived process that runs `farm` commands for the thin client of farm/client.py, so that a
command pays neither Python's imports nor the loading of its rule library again (sccache's design, for farm).

One server per user, cache directory, interpreter, copy of farm and PATH (farm/rendezvous.py names its socket). It runs
requests one at a time, each as the client's process would: the client's working directory, its FARM_* variables
and those that decide colours and widths set for the request and restored after it, sys.stdout and sys.stderr
relayed to the client (terminals where the client's are). Rule libraries stay loaded between requests
(farm.cache.engine.HeldEngines). A client that goes away (Ctrl-C) gets no more output: the server finishes the
request, and the next one waits for it. After `idle_timeout` seconds without a request, on SIGTERM, on a `stop`
message, or when a client of other code arrives (STALE), the server removes its socket and exits."""

from __future__ import annotations

import fcntl
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO, cast

from farm import rendezvous
from farm.cache.engine import HeldEngines, hold_engines
from farm.errors import ServerError

DEFAULT_IDLE_TIMEOUT = 15 * 60.0  # seconds
REQUEST_TIMEOUT = 10.0  # seconds a connected client has to send its request
START_TIMEOUT = 30.0  # seconds `start` waits for the new server's socket to answer
STOP_TIMEOUT = 30.0  # seconds `stop` waits for the socket to go (a request being run is finished first)
RELAY_CHUNK = 1 << 16  # bytes of output gathered before a frame is sent
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
Handler = Callable[[list[str]], int]  # runs a command line in this process; its exit code


@dataclass
class ServerState:
    """What `farm server status` shows."""

    pid: int
    socket: str
    cache_dir: str
    idle_timeout: float
    stamp: str
    started: float = field(default_factory=time.time)
    requests: int = 0


def serve(cache_dir: str, handler: Handler, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> bool:
    """Run the server in this process until it is told to stop or idles out. False (at once) when another server
    holds this socket."""
    path = _socket_path(cache_dir, create=True)
    with _exclusive(path + ".lock") as mine:
        if not mine:
            _log(f"a server already runs on {path}")
            return False
        state = ServerState(os.getpid(), path, os.path.abspath(cache_dir), idle_timeout, rendezvous.code_stamp())
        signal.signal(signal.SIGTERM, _exit_on_signal)
        hold_engines(held := HeldEngines())
        try:
            with _listening(path) as listener:
                _log(f"serving on {path} (pid {state.pid}, idle timeout {idle_timeout:g} s)")
                from farm.compiler.parallel import prestart_worker  # not for `farm server status` and the client

                prestart_worker()  # a new ruleset's first compile (tier 0) shares its chunks with it
                _accept_loop(listener, state, handler, held)
        finally:
            hold_engines(None)
    return True


def _socket_path(cache_dir: str, create: bool = False) -> str:
    try:
        return rendezvous.socket_path(cache_dir, create)
    except rendezvous.Unsafe as exc:
        raise ServerError(f"refusing to use the socket directory: {exc}") from None


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(0)  # unwinds through the `finally`s that remove the socket


@contextmanager
def _exclusive(lock_path: str) -> Iterator[bool]:
    """An advisory lock held while the server runs: of two servers started at once, one serves. The file holds
    the pid of the server that has it (for a server that no longer answers: `kill $(cat ...sock.lock)`)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


@contextmanager
def _listening(path: str) -> Iterator[socket.socket]:
    """The listening socket at `path` (a stale file from a killed server replaced; we hold the lock), removed at
    exit."""
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(16)
        yield listener
    finally:
        listener.close()
        if os.path.exists(path):
            os.unlink(path)


def _accept_loop(listener: socket.socket, state: ServerState, handler: Handler, held: HeldEngines) -> None:
    listener.settimeout(state.idle_timeout)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            _log(f"idle for {state.idle_timeout:g} s: exiting")
            return
        with conn:
            if not _answer(conn, state, handler, held):
                return


def _answer(conn: socket.socket, state: ServerState, handler: Handler, held: HeldEngines) -> bool:
    """Answer one connection; False when the server is to exit."""
    uid = PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))[1]
    if uid != os.getuid():
        _log(f"refused a connection from uid {uid}")
        return _send_quietly(conn, rendezvous.REFUSED, b"not this server's user")
    try:
        conn.settimeout(REQUEST_TIMEOUT)
        message = _read_request(conn)
        conn.settimeout(None)
    except (OSError, ValueError) as exc:
        _log(f"a bad request: {exc}")
        return _send_quietly(conn, rendezvous.REFUSED, str(exc).encode())
    control = message.get("control")
    if control is not None:
        reply = {**state.__dict__, "uptime": time.time() - state.started, "libraries": held.loaded()}
        _send_quietly(conn, rendezvous.REPLY, rendezvous.encode(reply))
        return control != "stop"
    # Other code first, before the rest of the request's form: a client of another protocol is of other code too,
    # and this server (the older, always: a client's stamp is its files' now) makes way for one of the client's.
    stamp = message.get("stamp")
    if isinstance(stamp, str) and (stamp != state.stamp or message.get("protocol") != rendezvous.PROTOCOL):
        _log("a client of other farm code: exiting")
        return not _send_quietly(conn, rendezvous.STALE, b"")
    try:
        _check_fields(message)
    except ValueError as exc:
        _log(f"a bad request: {exc}")
        return _send_quietly(conn, rendezvous.REFUSED, str(exc).encode())
    if message["cache_dir"] != state.cache_dir:  # two names' checksums alike: that client runs its command
        return _send_quietly(conn, rendezvous.REFUSED, b"a server of another cache directory")
    if message["path"] != os.environ.get("PATH", ""):  # two names' checksums alike: its tools may not be ours
        return _send_quietly(conn, rendezvous.REFUSED, b"a server started with another PATH")
    state.requests += 1
    start = time.perf_counter()
    try:
        code = _run(message, _Relay(conn), handler)
    except (OSError, LookupError) as exc:  # the client's directory gone, an unknown encoding: nothing was sent yet
        return _send_quietly(conn, rendezvous.REFUSED, str(exc).encode())
    _log(f"{message['argv']} in {message['cwd']}: exit {code}, {(time.perf_counter() - start) * 1000:.1f} ms")
    return True


def _read_request(conn: socket.socket) -> dict[str, Any]:
    kind, length = rendezvous.HEADER.unpack(rendezvous.read_exactly(conn, rendezvous.HEADER.size))
    if kind != rendezvous.REQUEST or length > rendezvous.MAX_REQUEST:
        raise ValueError(f"not a request of at most {rendezvous.MAX_REQUEST} bytes")
    return rendezvous.decode(rendezvous.read_exactly(conn, length))


def _check_fields(message: dict[str, Any]) -> None:
    for name, kind in REQUEST_FIELDS.items():
        if not isinstance(message.get(name), kind):
            raise ValueError(f"a request without its {name} ({kind.__name__})")


# what farm/client.py's `request` sends; each checked before it is used
REQUEST_FIELDS = {"stamp": str, "cache_dir": str, "path": str, "argv": list, "cwd": str, "env": dict,
                  "terminals": list, "encodings": list}


def _send_quietly(conn: socket.socket, kind: bytes, payload: bytes) -> bool:
    """Send one frame to a client that may have gone; True (the server goes on)."""
    with suppress(OSError):
        conn.sendall(rendezvous.frame(kind, payload))
    return True


class _Relay:
    """A command's output, sent to the client as OUT and ERR frames in the order it was written (a frame per
    switch of stream, or per RELAY_CHUNK bytes). A client gone (Ctrl-C) is not an error: the command finishes
    and its output is dropped."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.kind = rendezvous.OUT
        self.pending = bytearray()
        self.gone = False

    def write(self, kind: bytes, data: bytes) -> None:
        if kind != self.kind or len(self.pending) >= RELAY_CHUNK:
            self.flush()
            self.kind = kind
        self.pending += data

    def flush(self) -> None:
        if self.pending and not self.gone:
            try:
                self.conn.sendall(rendezvous.frame(self.kind, bytes(self.pending)))
            except OSError:
                self.gone = True
        self.pending.clear()

    def finish(self, code: int) -> None:
        self.flush()
        if not self.gone:
            _send_quietly(self.conn, rendezvous.EXIT, str(code).encode())


class _RelayedStream(io.BufferedIOBase):
    """One of the command's standard streams: bytes to the relay, a terminal when the client's is one."""

    def __init__(self, relay: _Relay, kind: bytes, terminal: bool) -> None:
        super().__init__()
        self.relay, self.kind, self.terminal = relay, kind, terminal

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.terminal

    def write(self, data: Any) -> int:
        self.relay.write(self.kind, bytes(data))
        return len(data)


def _run(message: dict[str, Any], relay: _Relay, handler: Handler) -> int:
    """Run one command as the client's process would, its output relayed; its exit code."""
    kinds = (rendezvous.OUT, rendezvous.ERR)
    streams = [io.TextIOWrapper(cast(BinaryIO, _RelayedStream(relay, kind, bool(terminal))), encoding=encoding,
                                errors=errors, write_through=True, line_buffering=True)
               for kind, terminal, (encoding, errors) in zip(kinds, message["terminals"], message["encodings"])]
    with _as_client(message["cwd"], message["env"], *streams):
        code = _exit_code(handler, list(message["argv"]))
        for stream in streams:
            stream.flush()
    relay.finish(code)
    return code


def _exit_code(handler: Handler, argv: list[str]) -> int:
    """What the process would exit with: the handler's code, SystemExit's (argparse's usage errors), or 1 and a
    traceback on stderr for a bug, as the interpreter prints an uncaught exception."""
    try:
        return handler(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1


@contextmanager
def _as_client(cwd: str, env: dict[str, str], stdout: TextIO, stderr: TextIO) -> Iterator[None]:
    """The client's directory, variables (rendezvous.forwarded: the server's own are unset) and streams
    for the time of a request; the server's back after it."""
    saved_env, saved_cwd, saved_streams = dict(os.environ), os.getcwd(), (sys.stdout, sys.stderr)
    try:
        for name in [name for name in os.environ if rendezvous.forwarded(name)]:
            del os.environ[name]
        os.environ.update(env)
        os.chdir(cwd)
        sys.stdout, sys.stderr = stdout, stderr
        yield
    finally:
        sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _log(text: str) -> None:
    """A line of the server's log (its stderr, the log file `start` opened)."""
    log = sys.__stderr__
    if log is not None:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} farm server[{os.getpid()}]: {text}\n")
        log.flush()


# The other side: what `farm server start|stop|status` do from a process of their own.

def ask(cache_dir: str, control: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """A control message's reply from the server of `cache_dir`; None when none answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(_socket_path(cache_dir))  # no directory (FileNotFoundError): no server
            conn.sendall(rendezvous.frame(rendezvous.REQUEST, rendezvous.encode({"control": control})))
            kind, payload = rendezvous.read_frame(conn)
            return rendezvous.decode(payload) if kind == rendezvous.REPLY else None
    except (OSError, ValueError):
        return None


def log_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, "server.log")


def spawn(cache_dir: str, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> subprocess.Popen[bytes]:
    """A server for `cache_dir` started detached, in a session of its own, its output to its log; not waited for.
    Of two started at once, one serves and the other exits (`serve`)."""
    log = log_path(cache_dir)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    # This farm, wherever it was imported from (a checkout's working directory too): the server runs in /, so that
    # it holds no directory of the user's, and must import the code its clients will name.
    # Its cache directory absolute, as it is in the socket's name.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (os.path.dirname(rendezvous.FARM_DIR),
                                                                     os.environ.get("PYTHONPATH")))),
           "FARM_CACHE_DIR": os.path.abspath(cache_dir)}
    command = [sys.executable, "-m", "farm.cli", "server", "run", "--idle-timeout", str(idle_timeout)]
    with open(log, "ab") as output, open(os.devnull, "rb") as devnull:
        return subprocess.Popen(command, stdin=devnull, stdout=output, stderr=subprocess.STDOUT, cwd="/", env=env,
                                start_new_session=True)


def start(cache_dir: str, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> tuple[dict[str, Any], bool]:
    """Start a server (spawn) and return once it answers, with its status and whether it was started (False: one
    was running). A running server of other farm code is stopped first."""
    running = ask(cache_dir, "status")
    if running is not None and running["stamp"] == rendezvous.code_stamp():
        return running, False
    if running is not None:
        stop(cache_dir)
    process = spawn(cache_dir, idle_timeout)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        status = ask(cache_dir, "status")
        if status is not None:
            return status, True
        if process.poll() is not None and ask(cache_dir, "status") is None:
            raise ServerError(f"the farm server exited with code {process.returncode} before it answered; see "
                              f"{log_path(cache_dir)}")
        time.sleep(0.02)
    raise ServerError(f"the farm server did not answer within {START_TIMEOUT:g} s; see {log_path(cache_dir)}")


def stop(cache_dir: str) -> dict[str, Any] | None:
    """Ask the server to exit, and wait until its socket is gone; its last status, or None if none ran."""
    status = ask(cache_dir, "stop", timeout=STOP_TIMEOUT)
    if status is None:
        return None
    deadline = time.monotonic() + STOP_TIMEOUT
    while os.path.exists(status["socket"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return status
