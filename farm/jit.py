"""The seed's JIT API, kept: JitConfig, JitCompiler.compile_llvm_ir, stats, an LRU of compiled functions.

Underneath it is the same builder as everything else: content-keyed artifacts in the store, the index
mapping pattern IDs to keys, so a changed IR for the same pattern ID is compiled again, never served stale.
"""

from __future__ import annotations

import ctypes
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from farm.builder import ArtifactBuilder, check_pattern_id
from farm.config import FarmConfig
from farm.errors import InvalidArgument, InvalidIR, LoadError, ToolchainError
from farm.loader import open_library
from farm.policy import DEFINE, GLOBAL_DEFINITION


@dataclass
class JitConfig:
    work_dir: Path = Path("/tmp/pattern_jit")
    cache_enabled: bool = True
    optimization_level: int = 2
    fallback_to_interpretation: bool = True
    max_cached_functions: int = 1000
    target: str = "native"
    cache_dir: Path | None = None  # artifact store + index; None = FARM_CACHE_DIR or ~/.cache/farm
    compile_path: str | None = None  # "staged" or "inprocess"; None = FARM_COMPILE_PATH or staged

    def __post_init__(self) -> None:
        if not 0 <= self.optimization_level <= 3:
            raise InvalidArgument("optimization_level", self.optimization_level, "an integer from 0 to 3")
        if self.max_cached_functions < 1:
            raise InvalidArgument("max_cached_functions", self.max_cached_functions, "an integer >= 1")


@dataclass
class CompiledFunction:
    name: str
    pattern_id: str
    llvm_ir: str
    compiled_at: datetime
    compilation_time_ms: float
    native_code_path: Path | None
    function_pointer: int | None
    cache_key: str = ""
    from_cache: bool = False
    _library: ctypes.CDLL | None = field(default=None, repr=False, compare=False)

    @property
    def is_native(self) -> bool:
        return self.function_pointer is not None


@dataclass
class CompilationStats:
    total_compilations: int = 0
    successful_compilations: int = 0
    failed_compilations: int = 0
    fallbacks: int = 0
    total_compilation_time_ms: float = 0.0

    @property
    def average_compilation_time_ms(self) -> float:
        return self.total_compilation_time_ms / self.successful_compilations if self.successful_compilations else 0.0


@dataclass
class CacheStatistics:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    size: int = 0
    max_size: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def entry_function(llvm_ir: str) -> str:
    m = DEFINE.search(llvm_ir)
    if not m:
        raise InvalidIR("the IR defines no function to export (expected a line starting with `define`)")
    return m.group(1) if m.group(1) is not None else m.group(2)


def rename_definitions(llvm_ir: str, suffix: str) -> str:
    """The module with every global it defines renamed `<name><suffix>`, so many modules link into one library
    without clashing; declarations (what the module imports) keep their names."""
    if re.search(r"\bcomdat\b", llvm_ir):
        raise InvalidIR("a module with comdats cannot share a library (the linker would fold them)")
    definitions = [m for pattern in (DEFINE, GLOBAL_DEFINITION) for m in pattern.finditer(llvm_ir)]
    quoted = {m.group(1) for m in definitions if m.group(1) is not None}
    bare = {m.group(2) for m in definitions if m.group(1) is None}
    for name in quoted:
        llvm_ir = llvm_ir.replace(f'@"{name}"', f'@"{name}{suffix}"')
    for name in sorted(bare, key=len, reverse=True):
        llvm_ir = re.sub(rf"@{re.escape(name)}(?![-a-zA-Z$._0-9])", f'@"{name}{suffix}"', llvm_ir)
    return llvm_ir


def symbol_address(library: ctypes.CDLL, name: str) -> int:
    try:
        address = ctypes.cast(library[name], ctypes.c_void_p).value
    except AttributeError:
        address = None
    if address is None:
        raise LoadError(f"the library does not export {name!r}")
    return address


class JitCompiler:
    def __init__(self, config: JitConfig | None = None) -> None:
        self.config = config or JitConfig()
        farm_config = FarmConfig.from_env()
        if self.config.cache_dir is not None:
            farm_config.cache_dir = Path(self.config.cache_dir)
        farm_config.work_dir = Path(self.config.work_dir)
        farm_config.opt_level = self.config.optimization_level
        farm_config.target = self.config.target
        farm_config.compile_path = self.config.compile_path or farm_config.compile_path
        self._builder = ArtifactBuilder(farm_config)
        self._lru: OrderedDict[str, CompiledFunction] = OrderedDict()
        self._stats = CompilationStats()
        self._cache = CacheStatistics(max_size=self.config.max_cached_functions)

    def compile_llvm_ir(self, llvm_ir: str, pattern_id: str) -> CompiledFunction:
        name = self._check(llvm_ir, pattern_id)
        key = self._key(llvm_ir)
        cached = self._lru.get(pattern_id) if self.config.cache_enabled else None
        if cached is not None and cached.cache_key == key:
            self._lru.move_to_end(pattern_id)
            self._cache.hits += 1
            return cached
        start = time.perf_counter()
        try:
            artifact = self._builder.ensure_ir(llvm_ir, pattern_id, self.config.target,
                                               self.config.optimization_level)
            lib = open_library(artifact.path, artifact.meta.sha256)
            pointer = symbol_address(lib, name)
        except (ToolchainError, LoadError) as exc:
            self._stats.total_compilations += 1
            self._stats.failed_compilations += 1
            if not self.config.fallback_to_interpretation or isinstance(exc, InvalidIR):
                raise
            self._stats.fallbacks += 1
            warnings.warn(f"compiling pattern {pattern_id!r} failed, falling back to interpretation: {exc}",
                          RuntimeWarning, stacklevel=2)
            return CompiledFunction(name, pattern_id, llvm_ir, datetime.now(UTC),
                                    (time.perf_counter() - start) * 1000, None, None, key)
        elapsed_ms = (time.perf_counter() - start) * 1000
        self._count(artifact.cached, 1, elapsed_ms)
        compiled = CompiledFunction(name, pattern_id, llvm_ir, datetime.now(UTC), elapsed_ms,
                                    artifact.path, pointer, key, artifact.cached, lib)
        self._remember(compiled)
        return compiled

    def compile_batch(self, items: Sequence[tuple[str, str]]) -> list[CompiledFunction]:
        """Compile (llvm_ir, pattern_id) pairs into one shared library: one link, one dlopen, shared pages,
        where a library per function costs about 8 KB resident each.

        Each module stays its own object, cached by content, so a changed function recompiles alone and the
        library is relinked. If the batch cannot be built, each item goes through compile_llvm_ir on its own,
        with its own error or fallback."""
        names = [self._check(llvm_ir, pattern_id) for llvm_ir, pattern_id in items]
        if not items:
            return []
        start = time.perf_counter()
        try:
            parts = [(f"fn{k}", rename_definitions(llvm_ir, f".farm{k}")) for k, (llvm_ir, _) in enumerate(items)]
            target = self._builder.target(self.config.target).name
            artifact = self._builder.ensure_parts(parts, items[0][1], target, self.config.optimization_level)
            for _, pattern_id in items[1:]:
                self._builder.index.record(pattern_id, target, artifact.meta)
            lib = open_library(artifact.path, artifact.meta.sha256)
            pointers = [symbol_address(lib, f"{name}.farm{k}") for k, name in enumerate(names)]
        except (ToolchainError, LoadError) as exc:
            warnings.warn(f"the batch of {len(items)} functions failed ({exc}); compiling them one at a time",
                          RuntimeWarning, stacklevel=2)
            return [self.compile_llvm_ir(llvm_ir, pattern_id) for llvm_ir, pattern_id in items]
        each_ms = (time.perf_counter() - start) * 1000 / len(items)
        self._count(artifact.cached, len(items), each_ms * len(items))
        compiled = [CompiledFunction(name, pattern_id, llvm_ir, datetime.now(UTC), each_ms, artifact.path, pointer,
                                     self._key(llvm_ir), artifact.cached, lib)
                    for name, (llvm_ir, pattern_id), pointer in zip(names, items, pointers, strict=True)]
        for function in compiled:
            self._remember(function)
        return compiled

    def _check(self, llvm_ir: str, pattern_id: str) -> str:
        check_pattern_id(pattern_id)
        if not llvm_ir.strip():
            raise InvalidIR("the IR is empty")
        return entry_function(llvm_ir)

    def _key(self, llvm_ir: str) -> str:
        return self._builder.key_for([("module", llvm_ir)], self._builder.target(self.config.target),
                                     self.config.optimization_level)

    def _count(self, cached: bool, functions: int, elapsed_ms: float) -> None:
        if cached:
            self._cache.hits += functions
            return
        self._cache.misses += functions
        self._stats.total_compilations += functions
        self._stats.successful_compilations += functions
        self._stats.total_compilation_time_ms += elapsed_ms

    def _remember(self, compiled: CompiledFunction) -> None:
        if not self.config.cache_enabled:
            return
        self._lru[compiled.pattern_id] = compiled
        self._lru.move_to_end(compiled.pattern_id)
        while len(self._lru) > self.config.max_cached_functions:
            self._lru.popitem(last=False)
            self._cache.evictions += 1

    def get_cached_function(self, pattern_id: str) -> CompiledFunction | None:
        return self._lru.get(pattern_id)

    def list_cached_functions(self) -> list[str]:
        return list(self._lru)

    def clear_cache(self) -> None:
        self._lru.clear()

    def get_stats(self) -> CompilationStats:
        return CompilationStats(**vars(self._stats))

    def get_cache_stats(self) -> CacheStatistics:
        return CacheStatistics(self._cache.hits, self._cache.misses, self._cache.evictions, len(self._lru),
                               self.config.max_cached_functions)
