"""An exclusive lock between the processes of one host, on a lock file: flock is released by the kernel when
its holder exits, even by SIGKILL, so a killed process never wedges the others. And how often this process's
threads hand each other the interpreter lock while one of them works in the background (quick_switching)."""

from __future__ import annotations

import fcntl
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from farm.errors import WorkDirError


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if absent, never followed through a symlink). The file is
    left in place: removing it safely while another process may be opening it is not worth an inode."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise WorkDirError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# A thread that wants the interpreter lock waits for its holder to drop it at most this long (sys.setswitchinterval;
# Python's default is 5 ms): where a thread generates code in the background, the one that needs the lock for a
# moment (a compile thread's return from LLVM, the first rewrite's Python parts) gets it within 50 us. Each call into
# LLVM is such a moment: emitting arith's tier-0 modules beside a thread generating code took 13.8 ms alone, 49 with
# the default, 24 at 0.2 ms, 15.3 at 50 us (the generating thread no slower); arith's first load, 3 alternating runs
# of 7: fastest 35-40 ms at 50 us against 40-45 at 0.2 ms.
QUICK_SWITCH_INTERVAL = 0.00005  # seconds
_quick_users = 0
_quick_lock = threading.Lock()
_usual_interval = 0.0


@contextmanager
def quick_switching() -> Iterator[None]:
    """The interpreter lock handed over every QUICK_SWITCH_INTERVAL while any thread is inside this (threads
    enter and leave in any order: the interval is put back when the last one leaves)."""
    global _quick_users, _usual_interval
    with _quick_lock:
        if _quick_users == 0:
            _usual_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_usual_interval, QUICK_SWITCH_INTERVAL))
        _quick_users += 1
    try:
        yield
    finally:
        with _quick_lock:
            _quick_users -= 1
            if _quick_users == 0:
                sys.setswitchinterval(_usual_interval)
