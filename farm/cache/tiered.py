"""Tiered compilation: a ruleset that has no library yet runs at once from memory while its library is built.

Tier 0 is the ruleset compiled inside this process by llvmlite at -O0 (fast instruction selection, no pass
pipeline: about a tenth of an optimised compile) and linked in memory: no files, no linker. At the same time a
background thread builds the shippable library (the configured path and -O level, stored and indexed as any
build), for the next process and for other nodes. When it lands, the engine moves the ruleset to it: later
calls run the optimised code. Normal forms are the same on both tiers; only the speed differs.

A background build that fails leaves tier 0 serving; the failure is logged and counted like any failed build.
The build threads are not daemons: a process that exits waits for them, so the library it started lands. The wait
runs when the main thread ends, before concurrent.futures stops taking work (a staged build submits its stages to a
pool of its own, which would then fail with "cannot schedule new futures after interpreter shutdown"). A build
thread that cannot start (RLIMIT_AS, RLIMIT_NPROC) is one log line: tier 0 keeps serving.

Threads and LLVM: llvmlite serialises every call into LLVM with one lock, so the build thread's reading back and
checking of modules and the calling thread's in-memory compiles share LLVM's global context one call at a time.
The staged tools the build thread starts are forked while the caller may hold that lock; the child runs no LLVM
code before exec (only the resource limits), and nothing of LLVM is kept in thread-local storage, which a forked
child clears.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from farm.errors import FarmError
from farm.locks import quick_switching
from farm.log import get_logger

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from farm.cache.builder import Artifact

log = get_logger(__name__)

TIER0_OPT_LEVEL = 0
_EVERY: weakref.WeakSet[BackgroundBuilds] = weakref.WeakSet()
_WAIT_AT_EXIT = threading.Lock()  # held once the exit hook is registered: registered once per process


def wait_for_all(timeout: float | None = None) -> bool:
    """Wait for the background builds of every engine of this process (a test suite, between its cases)."""
    return all([builds.wait(timeout) for builds in list(_EVERY)])

class BackgroundBuilds:
    """The libraries being built, one at a time, for rulesets already running from memory, by the engine's key."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[object, Future[Artifact]] = {}
        self._lock = threading.Lock()
        _EVERY.add(self)

    def start(self, key: object, build: Callable[[], Artifact], what: str) -> None:
        """Run build() in the background unless a build for `key` is running already."""
        from concurrent.futures import ThreadPoolExecutor  # not on a hit's path: it builds nothing

        with self._lock:
            if key in self._running:
                return
            if self._pool is None:  # one thread: a build already uses every core (the staged tools in parallel)
                _wait_at_exit()
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="farm-tier-up")
            try:
                future = self._pool.submit(_logging_failure, build, what)
            except RuntimeError as exc:  # the thread could not start, or the interpreter is shutting down
                pool, self._pool = self._pool, None
                pool.shutdown(wait=False, cancel_futures=True)  # the queued build must not run later by surprise
                log.warning("the library of %s is not built in the background; it keeps running from memory: %s",
                            what, exc)
                return
            self._running[key] = future

    def landed(self, key: object) -> Artifact | None:
        """The library built for `key`, once (it is forgotten after); None while it builds, or if it failed."""
        with self._lock:
            future = self._running.get(key)
            if future is None or not future.done():
                return None
            del self._running[key]
        return None if future.exception() is not None else future.result()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the builds started so far; True when none is left running."""
        from concurrent.futures import wait

        with self._lock:
            futures = list(self._running.values())
        return not wait(futures, timeout).not_done

    def pending(self) -> int:
        with self._lock:
            return sum(not future.done() for future in self._running.values())


def _wait_at_exit() -> None:
    """Wait for every engine's builds when the main thread ends, before concurrent.futures' own exit hook stops new
    work: threading runs these hooks in the reverse order of their registration, and concurrent.futures.thread
    registered its hook when it was imported (by start(), before this). atexit would run after the threads are
    joined: too late."""
    from contextlib import suppress

    if _WAIT_AT_EXIT.acquire(blocking=False):
        with suppress(RuntimeError):  # the interpreter is shutting down already: the build may fail, as logged
            threading._register_atexit(wait_for_all)  # type: ignore[attr-defined]


def _logging_failure(build: Callable[[], Artifact], what: str) -> Artifact:
    """build(), whose failure is one line in the log, written before its future is done: whoever waits for the
    build sees the line once the wait returns (a done-callback runs after the waiters wake). The caller has its
    results already (a traceback, for a failure that is not farm's own kind, only with debug logging on)."""
    import logging

    try:
        with quick_switching():  # the code generation here gives way at once to the caller's first rewrite
            return build()
    except BaseException as exc:
        log.warning("the library of %s could not be built in the background; it keeps running from memory: %s",
                    what, exc if isinstance(exc, FarmError) else f"{type(exc).__name__}: {exc}",
                    exc_info=exc if not isinstance(exc, FarmError) and log.isEnabledFor(logging.DEBUG) else None)
        raise
