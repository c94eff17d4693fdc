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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from farm.builder import ArtifactBuilder, check_pattern_id
from farm.config import FarmConfig
from farm.errors import InvalidIR, LoadError, ToolchainError
from farm.loader import verify_sha256

_DEFINE = re.compile(r'^define\b[^@\n]*@("(?:[^"\\]|\\.)*"|[-a-zA-Z$._][-a-zA-Z$._0-9]*)\s*\(', re.MULTILINE)


@dataclass
class JitConfig:
    work_dir: Path = Path("/tmp/pattern_jit")
    cache_enabled: bool = True
    optimization_level: int = 2
    fallback_to_interpretation: bool = True
    max_cached_functions: int = 1000
    target: str = "native"
    cache_dir: Path | None = None  # artifact store + index; None = FARM_CACHE_DIR or ~/.cache/farm

    def __post_init__(self) -> None:
        if not 0 <= self.optimization_level <= 3:
            raise ValueError(f"optimization_level must be 0..3, not {self.optimization_level}")
        if self.max_cached_functions < 1:
            raise ValueError("max_cached_functions must be at least 1")


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
    m = _DEFINE.search(llvm_ir)
    if not m:
        raise InvalidIR("the IR defines no function to export (expected a line starting with `define`)")
    name = m.group(1)
    return name[1:-1] if name.startswith('"') else name


class JitCompiler:
    def __init__(self, config: JitConfig | None = None) -> None:
        self.config = config or JitConfig()
        farm_config = FarmConfig.from_env()
        if self.config.cache_dir is not None:
            farm_config.cache_dir = Path(self.config.cache_dir)
        farm_config.work_dir = Path(self.config.work_dir)
        farm_config.opt_level = self.config.optimization_level
        farm_config.target = self.config.target
        self._builder = ArtifactBuilder(farm_config)
        self._lru: OrderedDict[str, CompiledFunction] = OrderedDict()
        self._stats = CompilationStats()
        self._cache = CacheStatistics(max_size=self.config.max_cached_functions)

    def compile_llvm_ir(self, llvm_ir: str, pattern_id: str) -> CompiledFunction:
        check_pattern_id(pattern_id)
        if not llvm_ir.strip():
            raise InvalidIR("the IR is empty")
        name = entry_function(llvm_ir)
        target = self._builder.target()
        key = self._builder.key_for([("module", llvm_ir)], target, self.config.optimization_level)
        cached = self._lru.get(pattern_id) if self.config.cache_enabled else None
        if cached is not None and cached.cache_key == key:
            self._lru.move_to_end(pattern_id)
            self._cache.hits += 1
            return cached
        start = time.perf_counter()
        try:
            artifact = self._builder.ensure_ir(llvm_ir, pattern_id, target.name, self.config.optimization_level)
            lib = self._open(artifact.path, artifact.meta.sha256)
            pointer = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        except (ToolchainError, LoadError, AttributeError) as exc:
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
        if artifact.cached:
            self._cache.hits += 1
        else:
            self._cache.misses += 1
            self._stats.total_compilations += 1
            self._stats.successful_compilations += 1
            self._stats.total_compilation_time_ms += elapsed_ms
        compiled = CompiledFunction(name, pattern_id, llvm_ir, datetime.now(UTC), elapsed_ms,
                                    artifact.path, pointer, key, artifact.cached, lib)
        if self.config.cache_enabled:
            self._remember(compiled)
        return compiled

    def _open(self, path: Path, sha256: str) -> ctypes.CDLL:
        verify_sha256(path, sha256)
        try:
            return ctypes.CDLL(str(path))
        except OSError as exc:
            raise LoadError(f"cannot load {path}: {exc}") from None

    def _remember(self, compiled: CompiledFunction) -> None:
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
