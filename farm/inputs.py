"""The one way farm reads a file a user names (rules, terms, config): a regular file, under a size cap, UTF-8.

A directory, FIFO or device (`/dev/zero`) is refused before a byte is read: it could block forever or never
end. The file is opened first and its type and size taken from the open descriptor (fstat), so a path swapped
after the check changes nothing, and the read stops one byte past the cap, so a file that grows after the
check is refused too.

Caps (bytes; the environment variable overrides, e.g. FARM_MAX_TERM_FILE_BYTES=512M):
- rule files 8 MiB: parsing costs ~120 MB of memory and ~2 s per MB of rules (measured on generated rule
  files), and every rule is then compiled; 8 MiB is ~150,000 rules, a hundred times the largest example.
- term files 128 MiB: parsing costs ~20 MB of memory and ~0.4 s per MB of terms (hash-consed graph), so
  the cap keeps a run under ~3 GB; a Peano numeral a million levels deep is 3 MB.
- config files 1 MiB: TOML `name = value` lines; a real one is a few hundred bytes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from farm.errors import (
    InputTooLarge,
    InputUnreadable,
    InvalidSetting,
    NotARegularFile,
    NotUtf8Text,
    SourceLocation,
)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputKind:
    """A kind of input file: its name in messages and its size cap (the default, or the variable's)."""

    name: str  # as the messages say it: "rule file"
    variable: str  # the environment variable that overrides the cap
    default_cap: int

    def cap(self) -> int:
        """The size cap in bytes: the environment's value, validated, or the default. Only the environment:
        the config file is itself read under a cap."""
        from farm.config import size

        text = os.environ.get(self.variable, "").strip()
        if not text:
            return self.default_cap
        try:
            value = size(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise InvalidSetting(self.variable, text, "a positive size in bytes, optionally with a K, M, G or T "
                                 f"suffix (e.g. {self.default_cap >> 20}M)", "in the environment")
        return value


RULES = InputKind("rule file", "FARM_MAX_RULE_FILE_BYTES", 8 << 20)
TERMS = InputKind("term file", "FARM_MAX_TERM_FILE_BYTES", 128 << 20)
CONFIG = InputKind("config file", "FARM_MAX_CONFIG_FILE_BYTES", 1 << 20)


def read_input_bytes(path: str | Path, kind: InputKind) -> bytes:
    """The whole file, if it is a regular file no larger than the kind's cap."""
    cap = kind.cap()
    name = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise InputUnreadable(name, f"no such {kind.name}") from None
    except OSError as exc:
        _refuse_if_special(name, kind)  # a socket cannot be opened at all: say what it is
        raise InputUnreadable(name, f"cannot open the {kind.name}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(name, kind, info.st_mode)
        if info.st_size > cap:
            raise _too_large(name, kind, cap)
        data = _read_at_most(fd, cap + 1)
    except OSError as exc:
        raise InputUnreadable(name, f"cannot read the {kind.name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > cap:  # it grew after fstat
        raise _too_large(name, kind, cap)
    return data


def read_input_text(path: str | Path, kind: InputKind) -> str:
    """The file as text; bytes that are not UTF-8 are a NotUtf8Text naming the line, column and byte offset."""
    return decode_utf8(read_input_bytes(path, kind), str(path))


def decode_utf8(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        where = SourceLocation(filename, data.count(b"\n", 0, exc.start) + 1, exc.start - line_start + 1)
        raise NotUtf8Text(where, f"not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                                 f"({exc.reason})") from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(_CHUNK, left))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _not_regular(name: str, kind: InputKind, mode: int) -> NotARegularFile:
    return NotARegularFile(name, f"is {_describe(mode)}, not a regular file; a {kind.name} must be a regular file")


def _refuse_if_special(name: str, kind: InputKind) -> None:
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise _not_regular(name, kind, mode)


def _too_large(name: str, kind: InputKind, cap: int) -> InputTooLarge:
    return InputTooLarge(name, f"the {kind.name} is larger than the cap of {cap:,} bytes; raise it with "
                               f"{kind.variable} (e.g. {kind.variable}={max(1, 2 * cap >> 20)}M)", cap, kind.variable)


def _describe(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((text for test, text in kinds if test(mode)), "not a regular file")
