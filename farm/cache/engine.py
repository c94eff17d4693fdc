"""The embedded driver: compile a ruleset (cached), load it, rewrite natively or fall back to the interpreter."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from farm.cache.builder import Artifact, ArtifactBuilder
from farm.cache.counting import best_effort
from farm.cache.signing import TrustedKeys
from farm.cache.signing import verify as verify_signature
from farm.cache.tiered import TIER0_OPT_LEVEL, BackgroundBuilds
from farm.config import FarmConfig
from farm.errors import (
    FarmError,
    IncompatibleArtifact,
    LoadError,
    ToolchainError,
    UnsupportedTarget,
)
from farm.lang.terms import TermGraph
from farm.lang.transduce import RuleSet
from farm.log import get_logger
from farm.runtime.loader import IN_MEMORY, NativeRuleset
from farm.semantics import DEFAULT_FUEL, RewriteResult, check_fuel
from farm.targets import REGISTRY, host_can_run, missing_flags, resolve

log = get_logger(__name__)


class FallbackWarning(UserWarning):
    """Native code was not available; the interpreter gave the (identical) results."""


@dataclass(frozen=True)
class CompileJob:
    """One compile of a batch (`Engine.compile_many`)."""

    ruleset: RuleSet
    pattern_id: str
    target: str
    opt_level: int


def load_native(ruleset: RuleSet, artifact: Artifact, trusted: TrustedKeys | None = None) -> NativeRuleset:
    """Check (with trusted keys) its signature and that the host can run it; NativeRuleset checks the sha256."""
    verify_signature(artifact.meta, trusted)
    target = REGISTRY.get(artifact.meta.target) or resolve("native")
    if artifact.meta.target != "native" and not host_can_run(target):
        raise IncompatibleArtifact(f"artifact {artifact.meta.key[:12]} is built for {artifact.meta.target}; "
                                   f"this host lacks {', '.join(missing_flags(target)) or target.arch}")
    return NativeRuleset(artifact.path, ruleset, artifact.meta.sha256)


class Engine:
    def __init__(self, config: FarmConfig | None = None, builder: ArtifactBuilder | None = None,
                 keep_loaded: int | None = None) -> None:
        """keep_loaded: the loaded libraries kept, least recently used dropped first (None: all of them)."""
        self.config = config or FarmConfig.from_env()
        self.builder = builder or ArtifactBuilder(self.config)
        self._in_memory: dict[tuple[str, int], Any] = {}
        # Loaded libraries by (fingerprint, target, -O): a loaded ruleset keeps rewriting with no index or
        # store round trip, so it keeps serving through a Redis or S3 outage.
        self._loaded: OrderedDict[tuple[str, str, int], NativeRuleset] = OrderedDict()
        self._keep_loaded = keep_loaded
        self.background = BackgroundBuilds()

    def loaded(self) -> list[tuple[str, str, int, str]]:
        """The libraries this engine holds, least recently used first: (ruleset fingerprint, target, -O, path)."""
        return [(*memo, str(native.path)) for memo, native in self._loaded.items()]

    def compile(self, ruleset: RuleSet, pattern_id: str, target: str | None = None,
                opt_level: int | None = None) -> Artifact:
        return self.builder.ensure_ruleset(ruleset, pattern_id, target, opt_level)

    def load_in_memory(self, ruleset: RuleSet, target: str | None = None,
                       opt_level: int | None = None) -> NativeRuleset:
        """Compile and load into this process with llvmlite: no files, no linker (local use only)."""
        from farm.runtime.inmemory import InMemoryCompiler

        resolved = self.builder.target(target)
        opt = self.config.opt_level if opt_level is None else opt_level
        key = (resolved.name, opt)
        compiler = self._in_memory.get(key)
        if compiler is None:
            compiler = self._in_memory[key] = InMemoryCompiler(resolved, opt, self.builder.objects)
        return compiler.load(ruleset)

    def compile_many(self, jobs: list[CompileJob]) -> Iterator[tuple[CompileJob, Artifact | FarmError]]:
        """Compile jobs in a local process pool; yields each job with its artifact or error as it finishes."""
        from concurrent.futures import ProcessPoolExecutor, as_completed  # multiprocessing: not for a rewrite

        pool = ProcessPoolExecutor(max_workers=self.config.workers or None, initializer=_leave_sigint_to_parent)
        try:
            futures = {pool.submit(_compile_job, self.config, job): job for job in jobs}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:  # also on Ctrl-C or when the caller stops early: jobs not started yet are dropped
            pool.shutdown(wait=True, cancel_futures=True)

    def rewrite(self, ruleset: RuleSet, graph: TermGraph, roots: list[int], pattern_id: str,
                fuel: int = DEFAULT_FUEL, engine: str = "auto", target: str | None = None) -> RewriteResult:
        """engine: "native" (errors propagate), "interpreter", or "auto" (native, else interpreter + warning)."""
        check_fuel(fuel)  # before any compile
        cap = self.config.max_memory
        if engine == "interpreter":
            return _interpret(ruleset, graph, roots, fuel, cap)
        try:
            native = self.load(ruleset, pattern_id, target)
        except (ToolchainError, LoadError, IncompatibleArtifact, UnsupportedTarget) as exc:  # tampering is never masked
            if engine == "native":
                raise
            warnings.warn(f"native code unavailable ({exc}); using the interpreter", FallbackWarning, stacklevel=2)
            best_effort("a fallback to the interpreter", lambda: self.builder.index.incr("fallbacks"))
            return _interpret(ruleset, graph, roots, fuel, cap)
        result = native.rewrite(graph, roots, fuel, cap)
        best_effort(f"the hot-pattern count of {pattern_id!r}",
                    lambda: self.builder.index.note_hot(pattern_id, sum(result.firings)))
        return result

    def wait_for_builds(self, timeout: float | None = None) -> bool:
        """Wait for the libraries being built in the background (farm/cache/tiered.py); True when all landed
        or failed, False at the timeout."""
        return self.background.wait(timeout)

    def load(self, ruleset: RuleSet, pattern_id: str, target: str | None = None) -> NativeRuleset:
        """The ruleset's native code, loaded once per engine: its library, or with tiering (farm/cache/tiered.py)
        the in-memory code until the library built in the background lands (`path` is `<in-memory>` till then)."""
        memo = (ruleset.fingerprint(), self.builder.target(target).name, self.config.opt_level)
        self._tier_up(ruleset, memo)
        native = self._loaded.get(memo)
        if native is not None and self._keep_loaded is not None and _removed(native):
            native = None  # a long-lived engine's library cleared or collected: built and stored again, as a new
            # process would (which is what a `farm server`'s client must see)
        if native is None:
            native = self._loaded[memo] = self._load(ruleset, pattern_id, target, memo)
            if self._keep_loaded is not None and len(self._loaded) > self._keep_loaded:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(memo)
        return native

    def _tier_up(self, ruleset: RuleSet, memo: tuple[str, str, int]) -> None:
        """A ruleset running from memory moves to its library once the background build has landed."""
        artifact = self.background.landed(memo)
        if artifact is None:
            return
        try:
            self._loaded[memo] = load_native(ruleset, artifact, self.builder.trusted)
        except FarmError as exc:  # e.g. evicted already: tier 0 keeps serving, and the next process builds it
            log.warning("could not load the library built in the background; running from memory: %s", exc)

    def _tiered(self, target: str | None) -> bool:
        """Whether a missing library is compiled in memory first: the code must run in this process, and this
        process must be able to load the library it builds. A node that loads only signed libraries and holds no
        signing key refuses its own build (UnsignedArtifact): it must not run the same code from memory either."""
        resolved = self.builder.target(target)
        refuses_own_build = self.builder.trusted is not None and self.builder.signer is None
        return (self.config.tiered and not refuses_own_build and not _address_space_capped()
                and (resolved.name == "native" or host_can_run(resolved)))

    EVICTION_RETRIES = 3  # loads retried after the library was evicted between its fetch and its dlopen

    def _load(self, ruleset: RuleSet, pattern_id: str, target: str | None,
              memo: tuple[str, str, int]) -> NativeRuleset:
        """The stored library; when there is none and tiering is on, the ruleset compiled in memory while its
        library is built in the background; else compiled (or fetched) and loaded. An artifact evicted between
        its fetch and its load is fetched or built again."""
        tiered = self._tiered(target)
        # A local miss by direct key goes straight to tier 0, whose compile starts as its code is generated; the
        # full lookup (the IR generated to find the library by content key) is the background build's. A shared
        # index's libraries are often built by the cluster, with no direct entry: there the full lookup runs first.
        artifact = self.builder.stored_ruleset(ruleset, pattern_id, target,
                                               direct_only=not self.builder.index.shared) if tiered else None
        if artifact is None and tiered:
            native = self.load_in_memory(ruleset, target, TIER0_OPT_LEVEL)
            self.background.start(memo, lambda: self.compile(ruleset, pattern_id, target), f"pattern {pattern_id!r}")
            return native
        for attempt in range(self.EVICTION_RETRIES + 1):
            artifact = artifact or self.compile(ruleset, pattern_id, target)
            try:
                return load_native(ruleset, artifact, self.builder.trusted)
            except LoadError:
                if artifact.path.exists() or attempt == self.EVICTION_RETRIES:
                    raise
            log.info("artifact %s was evicted before it was loaded; building it again", artifact.meta.key[:12])
            artifact = None
        raise AssertionError("unreachable: the last attempt returns or raises")


class HeldEngines:
    """The engines of a long-lived process that runs many commands (`farm server`): one per configuration, so a
    command finds the libraries an earlier one with the same FARM_* settings loaded, and loads no .so again. At
    most `configurations` engines, each keeping `libraries` loaded libraries, least recently used dropped first."""

    def __init__(self, configurations: int = 4, libraries: int = 16) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._configurations = configurations
        self._libraries = libraries

    def get(self, config: FarmConfig) -> Engine:
        key = _held_key(config)
        engine = self._engines.get(key)
        if engine is None:
            engine = self._engines[key] = Engine(config, keep_loaded=self._libraries)
            if len(self._engines) > self._configurations:
                self._engines.popitem(last=False)[1].wait_for_builds()
        self._engines.move_to_end(key)
        return engine

    def loaded(self) -> list[tuple[str, str, int, str]]:
        """Every library held, as Engine.loaded gives them."""
        return [library for engine in self._engines.values() for library in engine.loaded()]


def _held_key(config: FarmConfig) -> str:
    """Every setting (the environment's and the config file's), and the working directory when a key's path is
    relative to it (the cache and work directories are made absolute): the same text elsewhere names other files."""
    relative = any(path is not None and not path.is_absolute() for path in (config.signing_key, *config.verify_keys))
    return f"{os.getcwd() if relative else ''}\0{config!r}"


_held: HeldEngines | None = None  # set by `hold_engines` in a server; a one-shot command makes its own engine


def hold_engines(held: HeldEngines | None) -> None:
    """Make `command_engine` return held engines (None: a new engine each time, as a one-shot command)."""
    global _held
    _held = held


def command_engine() -> Engine:
    """The engine a CLI command uses: a new one for this process's configuration, or in a process that holds
    engines (a server), the one held for it."""
    config = FarmConfig.from_env()
    return Engine(config) if _held is None else _held.get(config)


def _removed(native: NativeRuleset) -> bool:
    """Whether a loaded library's file is gone from the cache (code compiled in memory has none)."""
    return native.path != IN_MEMORY and not native.path.exists()


def _interpret(ruleset: RuleSet, graph: TermGraph, roots: list[int], fuel: int, cap: int) -> RewriteResult:
    from farm.semantics.interp import Interpreter  # imported when it runs: a native rewrite needs none of it

    return Interpreter(ruleset).rewrite(graph, roots, fuel, cap)


def _address_space_capped() -> bool:
    """Under an address-space cap (ulimit -v), LLVM's in-process JIT aborts the process when it cannot map the code
    it links, with no error to catch: the library is built first there, whose failures are errors."""
    import resource

    return resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY


def _leave_sigint_to_parent() -> None:
    """In a pool process: Ctrl-C reaches the whole process group; the parent stops the pool, so a worker
    prints no traceback of its own. A Python-level no-op (not SIG_IGN) so the tools it runs still stop."""
    import signal

    signal.signal(signal.SIGINT, lambda signum, frame: None)


def _compile_job(config: FarmConfig, job: CompileJob) -> Artifact | FarmError:
    try:
        return ArtifactBuilder(config).ensure_ruleset(job.ruleset, job.pattern_id, job.target, job.opt_level)
    except FarmError as exc:
        return exc
