"""Where the `farm` command's client (farm/client.py) meets its server (farm/server.py), and what they say.

Only the standard library's cheapest modules are imported (os, stat, sys, struct, zlib, marshal): the client runs this
before anything else of farm, in every `farm` process.

The place: a Unix socket in a directory of the user's own (`$XDG_RUNTIME_DIR/farm`, else `/tmp/farm-<uid>`, mode
0700), named by a checksum of what makes a server's answers the client's: the cache directory, the interpreter,
farm's source directory and PATH. farm's code itself is not in the name but in every request (`code_stamp`): a
server whose code is older than its client's is told so and exits, instead of idling beside a new one.

The talk, one request per connection: the client sends one REQUEST frame, a `marshal`led dict (both ends are the
same interpreter, named in the socket's name; the server reads it only from a peer of its own user, and at most
MAX_REQUEST bytes); a control message, {"control": "status"} or {"control": "stop"}, is one too, answered by one
REPLY frame. Every frame is one byte of kind, four of length, then the payload. The server answers a command with
OUT and ERR frames (stdout and stderr bytes, in the order the command wrote them), then one EXIT (the exit code as
text); or with one REFUSED (a reason) or STALE (the server's code is not the client's), after which the client runs
the command itself."""

from __future__ import annotations

import contextlib
import marshal
import os
import stat
import struct
import sys
import zlib
from typing import Any

PROTOCOL = 1  # a server of another one exits (STALE), as one of other code does; a field added keeps it
MAX_REQUEST = 1 << 20  # bytes: argv, cwd and some variables take a few KiB
HEADER = struct.Struct("!cI")  # kind, payload length
REQUEST, REPLY, OUT, ERR, EXIT, REFUSED, STALE = b"q", b"a", b"1", b"2", b"x", b"r", b"s"
# What a request carries besides farm's own FARM_* variables: what farm/cli/console.py and rich read to decide
# colours and widths, and what places the config file and the default cache directory.
FORWARDED = ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES", "TERM", "HOME", "XDG_CONFIG_HOME",
             "XDG_CACHE_HOME")
FARM_DIR = os.path.dirname(os.path.abspath(__file__))


def forwarded(name: str) -> bool:
    """Whether a request carries the client's value of this variable (and the server sets it, or unsets its own)."""
    return name.startswith("FARM_") or name in FORWARDED


class Unsafe(Exception):
    """The socket directory is not private to this user (someone else's, a symlink, or open to others)."""


def socket_directory(create: bool = False) -> str:
    """The user's private directory for the socket (made 0700 if missing and `create`: a server's); Unsafe if it is
    not private, FileNotFoundError if it is missing."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    path = os.path.join(runtime, "farm") if runtime else f"/tmp/farm-{os.getuid()}"
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise Unsafe(f"{path} is not a directory private to user {os.getuid()} (mode 0700, owned by the user)")
    return path


def socket_path(cache_dir: str, create: bool = False) -> str:
    """The socket of the server for this cache directory, this interpreter, this copy of farm and this PATH (where
    the LLVM tools are found: a shell that changes it, activating an environment, gets a server of its own rather
    than one that would refuse it) (its directory made if `create`)."""
    parts = (os.path.abspath(cache_dir), sys.executable, FARM_DIR, os.environ.get("PATH", ""))
    name = "\0".join(parts).encode("utf-8", "surrogateescape")
    return os.path.join(socket_directory(create), f"{zlib.crc32(name):08x}{zlib.adler32(name):08x}.sock")


def code_stamp() -> str:
    """A checksum of farm's source files (path, size, mtime): any edit or reinstall changes it. About 90 stats."""
    listing = []
    pending = [FARM_DIR]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    pending.append(entry.path)
                elif entry.name.endswith(".py"):
                    info = entry.stat()
                    listing.append(f"{entry.path}\0{info.st_size}\0{info.st_mtime_ns}")
    listing.sort()
    return f"{len(listing)}-{zlib.crc32(chr(10).join(listing).encode('utf-8', 'surrogateescape')):08x}"


def encode(message: dict[str, Any]) -> bytes:
    """A request or a control message as one frame's payload."""
    return marshal.dumps(message)


def decode(data: bytes) -> dict[str, Any]:
    """A payload back; ValueError if it is not one `encode` made."""
    try:
        message = marshal.loads(data)
    except (EOFError, TypeError, ValueError) as exc:
        raise ValueError(f"not a farm request: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError("not a farm request")
    return message


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def read_exactly(conn: Any, size: int) -> bytes:
    """`size` bytes from a connected socket; ValueError if the peer closes it first."""
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("the peer closed the connection mid-frame")
        data += chunk
    return bytes(data)


def read_frame(conn: Any) -> tuple[bytes, bytes]:
    """One frame's kind and payload."""
    kind, length = HEADER.unpack(read_exactly(conn, HEADER.size))
    return kind, read_exactly(conn, length)
