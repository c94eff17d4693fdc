"""Compile-or-fetch against a cache index and an artifact store: the one path every deployment shares."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from farm.cache.backends import make_index, make_store
from farm.cache.counting import best_effort
from farm.cache.direct import direct_key
from farm.cache.index import CacheIndex
from farm.cache.signing import signer_of, trusted_keys_of, verify
from farm.cache.store import ArtifactMeta, ArtifactStore, check_key
from farm.compiler.tools import artifact_key, native_target, tool_versions
from farm.config import FarmConfig
from farm.errors import (
    BackendUnavailable,
    FarmError,
    IntegrityError,
    InvalidArtifactKey,
    InvalidPatternId,
    ToolchainError,
    ToolchainMismatch,
)
from farm.lang.transduce import RuleSet
from farm.locks import file_lock
from farm.log import get_logger
from farm.runtime.loader import sha256_file, verify_sha256
from farm.targets import Target, resolve

if TYPE_CHECKING:
    from farm.cache.gc import LocalTier
    from farm.cache.objcache import UsedObjectCache
    from farm.compiler.toolchain import BuildResult, Toolchain

log = get_logger(__name__)

MAX_PATTERN_ID = 4096


def check_pattern_id(pattern_id: str) -> str:
    """Pattern IDs are data (stored in the index), never paths: only emptiness, NUL, length and text that is not
    Unicode (lone surrogates, which no UTF-8 store takes) are refused."""
    if not isinstance(pattern_id, str) or not pattern_id:
        raise InvalidPatternId("a pattern ID must be a non-empty string")
    if "\0" in pattern_id:
        raise InvalidPatternId(f"pattern ID {pattern_id[:40]!r} contains a NUL byte")
    try:  # the indexes (SQLite, Redis), the logs and the console all take UTF-8
        pattern_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPatternId(f"pattern ID {pattern_id[:40]!r} is not Unicode text: a lone surrogate at "
                               f"character {exc.start} (undecodable bytes of a file name?)") from None
    if len(pattern_id) > MAX_PATTERN_ID:
        raise InvalidPatternId(f"pattern ID is {len(pattern_id)} characters long; the limit is {MAX_PATTERN_ID}")
    return pattern_id


def build_lock(cache_dir: Path, key: str) -> AbstractContextManager[None]:
    """Single flight among the processes of this host that share a cache dir: one builds a key while the
    others wait for it (a lock file per key)."""
    return file_lock(cache_dir / "locks" / key[:2] / f"{key}.lock")


@dataclass
class Artifact:
    """A library a request got: its metadata and local path, and whether it came from the store."""

    meta: ArtifactMeta
    path: Path
    cached: bool  # served from the store rather than compiled now
    seconds: float  # wall time of this request


class ArtifactBuilder:
    def __init__(self, config: FarmConfig | None = None, index: CacheIndex | None = None,
                 store: ArtifactStore | None = None, count_requests: bool = True) -> None:
        """count_requests: False on cluster workers, whose requests the coordinator already counted."""
        self.count_requests = count_requests
        self.config = config or FarmConfig.from_env()
        # Loaded first, so a bad key file stops a builder or worker at start (before any connection), not at
        # its first artifact
        self.signer = signer_of(self.config)
        self.trusted = trusted_keys_of(self.config)
        self.index = index or make_index(self.config)
        self.store = store or make_store(self.config, self.index)

    # What builds and what collects, made (and imported) on first use: a hit needs none of them.
    @cached_property
    def objects(self) -> UsedObjectCache:
        from farm.cache.objcache import UsedObjectCache

        return UsedObjectCache(self.config.cache_dir / "objcache")

    @cached_property
    def toolchain(self) -> Toolchain:
        from farm.compiler.toolchain import Toolchain

        return Toolchain(self.config.build_dir, self.config.stage_timeout,
                         memory_limit=self.config.stage_memory_mb << 20, compile_path=self.config.compile_path,
                         object_cache=self.objects)

    @cached_property
    def local_tier(self) -> LocalTier | None:
        from farm.cache.gc import LocalTier

        return LocalTier.of(self.store, self.index, self.objects)

    def target(self, name: str | None = None) -> Target:
        name = name or self.config.target
        return native_target() if name == "native" else resolve(name)

    def versions(self) -> dict[str, str]:
        return tool_versions(self.config.compile_path)

    def key_for(self, parts: list[tuple[str, str]], target: Target, opt_level: int) -> str:
        return artifact_key(parts, target, opt_level, self.versions())

    def direct_key_for(self, ruleset: RuleSet, target: Target, opt_level: int) -> str:
        return direct_key(ruleset.fingerprint(), target, opt_level, self.versions())

    def ensure_ruleset(self, ruleset: RuleSet, pattern_id: str, target: str | None = None,
                       opt_level: int | None = None) -> Artifact:
        """The ruleset's library, looked up first by its direct-mode key (farm/cache/direct.py), which takes no
        code generation. On a miss, or when the library that key names is gone, the IR is generated and the
        library found or built by its content key (ensure_parts); then the direct entry is recorded."""
        artifact = self._ruleset(ruleset, pattern_id, target, opt_level, build=True)
        assert artifact is not None  # built when not stored
        return artifact

    def stored_ruleset(self, ruleset: RuleSet, pattern_id: str, target: str | None = None,
                       opt_level: int | None = None, direct_only: bool = False) -> Artifact | None:
        """The ruleset's library if it is stored already (found as ensure_ruleset finds it, and counted as a hit);
        None when it would have to be built, and then nothing is counted: the build that follows counts its miss.
        `direct_only`: by its direct-mode key alone, with no code generation (a library stored under its content
        key with no direct entry is then found by the build that follows, which counts it a hit)."""
        return self._ruleset(ruleset, pattern_id, target, opt_level, build=False, direct_only=direct_only)

    def _ruleset(self, ruleset: RuleSet, pattern_id: str, target: str | None, opt_level: int | None,
                 build: bool, direct_only: bool = False) -> Artifact | None:
        check_pattern_id(pattern_id)
        start = time.perf_counter()
        resolved = self.target(target)
        opt = self.config.opt_level if opt_level is None else opt_level
        direct = self.direct_key_for(ruleset, resolved, opt)
        hit = self._direct_hit(direct, pattern_id, resolved, opt, start)
        if hit is not None or direct_only:
            return hit
        # The code generator (and llvmlite under it) is imported only here: a hit never needs it.
        from farm.compiler.codegen import llvm
        from farm.lang.serialize import ruleset_to_json

        parts = llvm.ruleset_parts(ruleset, resolved.triple)
        if build:
            artifact: Artifact | None = self.ensure_parts(parts, pattern_id, resolved.name, opt,
                                                          ruleset_to_json(ruleset))
        else:
            artifact = self._hit(self.key_for(parts, resolved, opt), pattern_id, resolved.name, start)
        if artifact is not None:
            found = artifact.meta.key
            best_effort(f"the direct-mode entry of {found[:12]}", lambda: self.index.record_direct(direct, found))
            artifact.seconds = time.perf_counter() - start
        return artifact

    def _direct_hit(self, direct: str, pattern_id: str, resolved: Target, opt: int, start: float) -> Artifact | None:
        """The library a direct-mode key names, fetched and verified as any hit; None (a miss: the full path runs)
        when the key is unknown, the index unreachable, or the library gone or not made from these inputs."""
        try:
            key = self.index.lookup_direct(direct)
            if key is None:
                return None
            check_key(key)
        except (BackendUnavailable, InvalidArtifactKey) as exc:
            log.warning("direct-mode lookup failed, generating the IR to key the ruleset: %s", exc)
            return None
        versions = self.versions()
        hit = self._hit(key, pattern_id, resolved.name, start, made_for=lambda meta: (
            meta.target == resolved.name and meta.opt_level == opt and meta.toolchain == versions))
        if hit is None:
            log.info("the direct-mode entry of %s names no usable library; generating the IR", key[:12])
        return hit

    def ensure_ir(self, ir_text: str, pattern_id: str, target: str | None = None,
                  opt_level: int | None = None) -> Artifact:
        """The artifact of one arbitrary module (the seed's compile_llvm_ir)."""
        return self.ensure_parts([("module", ir_text)], pattern_id, target, opt_level)

    def ensure_parts(self, parts: list[tuple[str, str]], pattern_id: str, target: str | None = None,
                     opt_level: int | None = None, ruleset_json: str = "",
                     versions: dict[str, str] | None = None) -> Artifact:
        """The artifact linked from these modules: fetched (verified) if stored, else built (reusing cached
        objects), stored, then indexed.

        `versions` is the toolchain the caller computed the key with (a cluster coordinator); a worker whose
        tools differ refuses the job rather than store it under a key that does not describe it."""
        check_pattern_id(pattern_id)
        start = time.perf_counter()
        resolved = self.target(target)
        opt = self.config.opt_level if opt_level is None else opt_level
        key = self.key_for(parts, resolved, opt)
        if versions is not None and versions != self.versions():
            raise ToolchainMismatch(f"this worker's toolchain {self.versions()} differs from the one the "
                                    f"request was keyed with {versions}")
        hit = self._hit(key, pattern_id, resolved.name, start)
        if hit is not None:
            return hit
        with build_lock(self.config.cache_dir, key):
            # Whoever held the lock before us may have built it: then it is a hit, and nothing is counted twice.
            hit = self._hit(key, pattern_id, resolved.name, start)
            if hit is not None:
                return hit
            return self._build(parts, key, pattern_id, resolved, opt, ruleset_json, start)

    def _hit(self, key: str, pattern_id: str, target: str, start: float,
             made_for: Callable[[ArtifactMeta], bool] | None = None) -> Artifact | None:
        """The stored library of `key`, verified and counted as a hit; with `made_for`, only one whose metadata it
        accepts (nothing is counted otherwise)."""
        copied = not self.store.local_path(key).exists()  # a shared store's hit may copy the library here
        found = self._fetch_verified(key)
        if found is None:
            return None
        path, meta = found
        if made_for is not None and not made_for(meta):
            log.warning("stored artifact %s was not built from the inputs its direct-mode entry names", key[:12])
            return None
        if copied:
            self._keep_within_limit(key)
        if self.count_requests:
            best_effort(f"a hit on {key[:12]}", lambda: self._note_hit(pattern_id, target, meta, copied))
        else:
            self._note_hit(pattern_id, target, meta, copied)
        return Artifact(meta, path, True, time.perf_counter() - start)

    def _note_hit(self, pattern_id: str, target: str, meta: ArtifactMeta, copied: bool = False) -> None:
        if self.index.shared or not copied:
            # Stored but maybe never indexed: its builder died between the two (a SIGKILLed worker, whose job was
            # then redelivered here). That compilation happened; it is counted once, by whichever finder gives the
            # index its entry (one step: of two finders at once, one counts it). An entry already there, even an
            # unreadable one, is left to note_hit/record, which rewrite it.
            # Not so a library copied from a shared store into a node's own index: another node built it.
            self.index.note_build_if_new(pattern_id, target, meta)
        if self.count_requests:
            self.index.note_hit(pattern_id, target, meta)
        else:
            self.index.record(pattern_id, target, meta)

    def _count_failure(self, target: str) -> None:
        self.index.incr("compilations_failed")
        self.index.incr(f"compilations_failed:{target}")

    def _build(self, parts: list[tuple[str, str]], key: str, pattern_id: str, resolved: Target, opt: int,
               ruleset_json: str, start: float) -> Artifact:
        """Build, store, then index (counting the stored bytes): called under the key's build lock."""
        from farm.compiler.toolchain import remove_build_dir

        if self.count_requests:
            self.index.note_miss(pattern_id)
        try:
            build = self._build_parts(parts, resolved, opt)
        except Exception:  # not only farm's own errors: the miss counted above gets its outcome either way
            best_effort("a failed compilation", lambda: self._count_failure(resolved.name))
            raise
        try:
            meta = ArtifactMeta(key=key, sha256=sha256_file(build.so_path), size=build.so_path.stat().st_size,
                                target=resolved.name, triple=resolved.triple, cpu=resolved.cpu, opt_level=opt,
                                stage_seconds=build.stage_seconds, pattern_ids=[pattern_id],
                                toolchain=build.versions, ruleset=ruleset_json,
                                objects_compiled=build.objects_compiled, objects_reused=build.objects_reused)
            if self.signer is not None:
                meta.signature = self.signer.sign(meta)
            self.store.put(build.so_path, meta)
        finally:
            remove_build_dir(build)
        self.index.note_build(pattern_id, resolved.name, meta)  # only after the object is stored
        self._keep_within_limit(key)
        return Artifact(meta, self.store.local_path(key), False, time.perf_counter() - start)

    def _build_parts(self, parts: list[tuple[str, str]], target: Target, opt: int) -> BuildResult:
        """Toolchain.build_parts; if an object of the object cache was evicted before the link, built again
        without the object cache (every module compiled into the build directory, where nothing evicts it)."""
        from farm.cache.objcache import lent_objects_missing

        with self.objects.lending() as lent:
            try:
                return self.toolchain.build_parts(parts, target, opt)
            except ToolchainError:
                if not lent_objects_missing(lent):
                    raise
        log.info("a cached object was evicted while a build was linking it; building again without the cache")
        return dataclasses.replace(self.toolchain, object_cache=None).build_parts(parts, target, opt)

    def _keep_within_limit(self, key: str) -> None:
        """After the local tier gained an artifact: evict the least recently used past FARM_CACHE_SIZE (never that
        artifact). A failure is logged: the artifact stored is what this request needs."""
        from farm.cache.gc import Policy, gc_local

        if not self.config.cache_size or self.local_tier is None:
            return
        try:
            report = gc_local(self.local_tier, Policy(max_size=self.config.cache_size, keep=frozenset({key})))
        except (FarmError, OSError) as exc:
            log.warning("could not keep the cache %s within FARM_CACHE_SIZE: %s", self.config.cache_dir, exc)
            return
        if report.artifacts_evicted or report.objects_evicted:
            log.info("cache over FARM_CACHE_SIZE: evicted %d artifacts and %d objects, %d bytes left",
                     report.artifacts_evicted, report.objects_evicted, report.bytes_after)

    def _fetch_verified(self, key: str) -> tuple[Path, ArtifactMeta] | None:
        """A stored artifact whose bytes match its sha256; a missing one counts as a miss, and so does a
        corrupt or swapped one, after it is deleted and the reason logged. A builder that signs also refuses
        (and so rebuilds and re-signs) one no key it trusts signed: after a rotation, or a forgery."""
        try:
            found = self.store.fetch(key)
            if found is None:
                return None
            path, meta = found
            verify_sha256(path, meta.sha256)
            if self.signer is not None:
                verify(meta, self.trusted)
        except IntegrityError as exc:
            log.warning("refused stored artifact %s, rebuilding it: %s", key[:12], exc)
            self.store.delete(key)
            return None
        except FileNotFoundError:
            log.info("stored artifact %s was evicted as it was fetched; rebuilding it", key[:12])
            return None
        return path, meta


