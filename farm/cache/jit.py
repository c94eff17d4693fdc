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
from typing import Any

from farm.cache.builder import ArtifactBuilder, check_pattern_id
from farm.cache.signing import verify as verify_signature
from farm.compiler.policy import parse_ir, unescape_name
from farm.config import FarmConfig
from farm.errors import InvalidArgument, InvalidIR, LoadError, StageFailed, ToolchainError
from farm.runtime.loader import open_library


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


def entry_function(llvm_ir: str) -> str | None:
    """The first function the module defines, as LLVM parses it; None when LLVM cannot parse the text here
    (the build then fails with the compiling tool's own message)."""
    try:
        module = parse_ir(llvm_ir)
    except StageFailed:
        return None
    for fn in module.functions:
        if not fn.is_declaration:
            return str(fn.name)
    raise InvalidIR("the IR defines no function to export")


# LLVM's lexer, as far as `@` names go: a comment runs to the end of the line, a string (also a quoted name)
# runs to the next `"` whatever precedes it (there is no escape for `"`), and LLVM 22 also skips /* */.
_GLOBAL_TOKEN = re.compile(r';[^\n]*|/\*.*?\*/|"[^"]*"|@("[^"]*"|[-a-zA-Z$._][-a-zA-Z$._0-9]*)', re.DOTALL)


def rename_definitions(llvm_ir: str, suffix: str) -> str:
    """The module with every global it defines renamed `<name><suffix>`, so many modules link into one library
    without clashing; declarations (what the module imports) keep their names.

    The parser names the definitions; the text is rewritten at exactly those `@name` tokens, then parsed again
    and refused unless it defines exactly the renamed globals and imports what it did. (Renaming through
    llvmlite would print LLVM 22 syntax that llvm-as-16 cannot always read.)"""
    before = _globals_of(parse_ir(llvm_ir))
    defined = before[0]

    def rename(token: re.Match[str]) -> str:
        name = token.group(1)
        if name is None:
            return token.group()
        plain = unescape_name(name[1:-1]) if name.startswith('"') else name
        return f'@"{_escape_name(plain + suffix)}"' if plain in defined else token.group()

    renamed = _GLOBAL_TOKEN.sub(rename, llvm_ir)
    after = _globals_of(parse_ir(renamed))
    if after != ({name + suffix for name in defined}, before[1]):
        raise InvalidIR("renaming the module's definitions changed more than their names; refusing to link it")
    return renamed


def _globals_of(module: Any) -> tuple[set[str], set[str]]:
    """(globals defined, functions declared) by a parsed module; a module with comdats is refused."""
    if re.search(r"^\$.* = comdat ", str(module), re.MULTILINE):  # the canonical printout: one comdat a line
        raise InvalidIR("a module with comdats cannot share a library (the linker would fold them)")
    defined = {g.name for g in (*module.functions, *module.global_variables) if not g.is_declaration and g.name}
    declared = {f.name for f in module.functions if f.is_declaration}
    return defined, declared


def _escape_name(name: str) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:02X}"
                   for b in name.encode("utf-8", "surrogateescape"))


def _named(name: str | None) -> str:
    if name is None:  # llvm-as-16 built text that llvmlite's newer LLVM could not parse: nothing named it
        raise InvalidIR("LLVM could not parse the IR here to find the function to export")
    return name


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
        self._check(llvm_ir, pattern_id)
        key = self._key(llvm_ir)
        cached = self._lru.get(pattern_id) if self.config.cache_enabled else None
        if cached is not None and cached.cache_key == key:
            self._lru.move_to_end(pattern_id)
            self._cache.hits += 1
            return cached
        start = time.perf_counter()
        name = entry_function(llvm_ir)  # parsed only when this very IR is not loaded already: a hit stays cheap
        try:
            artifact = self._builder.ensure_ir(llvm_ir, pattern_id, self.config.target,
                                               self.config.optimization_level)
            verify_signature(artifact.meta, self._builder.trusted)
            lib = open_library(artifact.path, artifact.meta.sha256)
            pointer = symbol_address(lib, _named(name))
        except (ToolchainError, LoadError) as exc:
            self._stats.total_compilations += 1
            self._stats.failed_compilations += 1
            if not self.config.fallback_to_interpretation or isinstance(exc, InvalidIR):
                raise
            self._stats.fallbacks += 1
            warnings.warn(f"compiling pattern {pattern_id!r} failed, falling back to interpretation: {exc}",
                          RuntimeWarning, stacklevel=2)
            return CompiledFunction(name or "", pattern_id, llvm_ir, datetime.now(UTC),
                                    (time.perf_counter() - start) * 1000, None, None, key)
        elapsed_ms = (time.perf_counter() - start) * 1000
        self._count(artifact.cached, 1, elapsed_ms)
        compiled = CompiledFunction(_named(name), pattern_id, llvm_ir, datetime.now(UTC), elapsed_ms,
                                    artifact.path, pointer, key, artifact.cached, lib)
        self._remember(compiled)
        return compiled

    def compile_batch(self, items: Sequence[tuple[str, str]]) -> list[CompiledFunction]:
        """Compile (llvm_ir, pattern_id) pairs into one shared library: one link, one dlopen, shared pages,
        where a library per function costs about 8 KB resident each.

        Each module stays its own object, cached by content, so a changed function recompiles alone and the
        library is relinked. If the batch cannot be built, each item goes through compile_llvm_ir on its own,
        with its own error or fallback."""
        for llvm_ir, pattern_id in items:
            self._check(llvm_ir, pattern_id)
        names = [entry_function(llvm_ir) for llvm_ir, _ in items]
        if not items:
            return []
        start = time.perf_counter()
        try:
            parts = [(f"fn{k}", rename_definitions(llvm_ir, f".farm{k}")) for k, (llvm_ir, _) in enumerate(items)]
            target = self._builder.target(self.config.target).name
            artifact = self._builder.ensure_parts(parts, items[0][1], target, self.config.optimization_level)
            for _, pattern_id in items[1:]:
                self._builder.index.record(pattern_id, target, artifact.meta)
            verify_signature(artifact.meta, self._builder.trusted)
            lib = open_library(artifact.path, artifact.meta.sha256)
            pointers = [symbol_address(lib, f"{_named(name)}.farm{k}") for k, name in enumerate(names)]
        except (ToolchainError, LoadError) as exc:
            warnings.warn(f"the batch of {len(items)} functions failed ({exc}); compiling them one at a time",
                          RuntimeWarning, stacklevel=2)
            return [self.compile_llvm_ir(llvm_ir, pattern_id) for llvm_ir, pattern_id in items]
        each_ms = (time.perf_counter() - start) * 1000 / len(items)
        self._count(artifact.cached, len(items), each_ms * len(items))
        compiled = [CompiledFunction(_named(name), pattern_id, llvm_ir, datetime.now(UTC), each_ms, artifact.path,
                                     pointer, self._key(llvm_ir), artifact.cached, lib)
                    for name, (llvm_ir, pattern_id), pointer in zip(names, items, pointers, strict=True)]
        for function in compiled:
            self._remember(function)
        return compiled

    def _check(self, llvm_ir: str, pattern_id: str) -> None:
        check_pattern_id(pattern_id)
        if not llvm_ir.strip():
            raise InvalidIR("the IR is empty")

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
