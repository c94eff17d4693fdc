"""What the cache commands call (`farm cache ls|show|clear|gc`, `farm stats --zero`): the tiers a configuration
names, listing and describing what they hold, and collecting or clearing them (farm/cache/gc.py does the evicting).

The local tier is this host's cache directory; the shared tier is the cluster's index and store (Redis and S3).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from farm.cache.backends import make_index, make_store
from farm.cache.gc import CLEAR, GcReport, LocalTier, Policy, gc_local, gc_shared
from farm.cache.index import ArtifactIndex, IndexedArtifact
from farm.cache.objcache import UsedObjectCache
from farm.cache.store import ArtifactMeta, ArtifactStore
from farm.cache.store.local import LocalStore
from farm.compiler.tools import tool_versions
from farm.config import FarmConfig
from farm.errors import ConfigError, FarmError
from farm.targets import target_names


def local_tier(config: FarmConfig) -> LocalTier:
    """The cache directory; with its index when the directory is the store (embedded), without when it holds this
    node's copies of the shared store (the shared index is `--shared`'s to change)."""
    store = LocalStore(config.cache_dir)
    index = None if config.s3_endpoint else make_index(config)
    return LocalTier(store, UsedObjectCache(config.cache_dir / "objcache"), index)


def shared_tier(config: FarmConfig) -> tuple[ArtifactIndex, ArtifactStore]:
    if not (config.redis_url and config.s3_endpoint):
        raise ConfigError("--shared needs the cluster's index and store: set FARM_REDIS_URL and FARM_S3_ENDPOINT "
                          "(see README.md)")
    index = make_index(config)
    return index, make_store(config, index)


def collect(config: FarmConfig, shared: bool, max_size: int | None = None,
            older_than: float | None = None) -> GcReport:
    """`farm cache gc`: without a bound, the local tier is brought within FARM_CACHE_SIZE (the shared tier has no
    configured bound: give one)."""
    if shared:
        index, store = shared_tier(config)
        return gc_shared(index, store, Policy(max_size, older_than))
    if max_size is None and older_than is None and config.cache_size:
        max_size = config.cache_size
    return gc_local(local_tier(config), Policy(max_size, older_than))


def clear(config: FarmConfig, shared: bool) -> GcReport:
    """`farm cache clear`: every artifact and object of the tier, now (readers rebuild what they were using)."""
    if shared:
        index, store = shared_tier(config)
        return gc_shared(index, store, CLEAR)
    return gc_local(local_tier(config), CLEAR)


def listing(config: FarmConfig) -> list[IndexedArtifact]:
    """`farm cache ls`: the configured index's artifacts (the cluster's when one is configured), least recently
    used first."""
    return make_index(config).artifacts()


def zero_stats(config: FarmConfig) -> None:
    """`farm stats --zero`."""
    make_index(config).zero_counters()


@dataclass
class Shown:
    """One artifact as `farm cache show` describes it."""

    key: str
    entry: IndexedArtifact | None  # None: not indexed
    meta: ArtifactMeta | None  # None: not indexed, or metadata of another format
    stored: bool  # the store has its library
    patterns: list[tuple[str, str]] = field(default_factory=list)  # (pattern ID, target) the query found it by
    miss: str | None = None  # why a request for it would miss; None: it would hit

    def to_json(self) -> dict[str, object]:
        meta = {**asdict(self.meta), "ruleset": f"{len(self.meta.ruleset)} characters"} if self.meta else None
        return {"key": self.key, "indexed": asdict(self.entry) if self.entry else None, "meta": meta,
                "stored": self.stored,
                "patterns": [{"pattern_id": p, "target": t} for p, t in self.patterns], "miss": self.miss}


_HEX = re.compile(r"[0-9a-f]{6,64}")


def describe(config: FarmConfig, query: str) -> list[Shown]:
    """`farm cache show KEY|PATTERN`: the artifacts whose key starts with `query` (at least 6 hex digits), or else
    those the pattern ID `query` points at, one per target; empty when there are none."""
    index = make_index(config)
    store = make_store(config, index)
    entries = {entry.key: entry for entry in index.artifacts()}
    found: dict[str, list[tuple[str, str]]] = {}
    if _HEX.fullmatch(query):
        found = {key: [] for key in entries if key.startswith(query)}
    if not found:
        for target in target_names():
            key = index.lookup(query, target)
            if key is not None:
                found.setdefault(key, []).append((query, target))
    current = _host_toolchain(config)
    return [_shown(key, patterns, entries.get(key), index, store, current) for key, patterns in found.items()]


def _shown(key: str, patterns: list[tuple[str, str]], entry: IndexedArtifact | None, index: ArtifactIndex,
           store: ArtifactStore, current: dict[str, str] | None) -> Shown:
    meta = index.meta(key)
    try:
        stored = store.exists(key)
    except FarmError:  # not a content key (an edited index entry): nothing to find under it
        stored = False
    return Shown(key, entry, meta, stored, patterns, why_miss(entry, meta, stored, current))


def why_miss(entry: IndexedArtifact | None, meta: ArtifactMeta | None, stored: bool,
             current: dict[str, str] | None) -> str | None:
    """Why a request for this artifact would miss, as far as the index, the store and this host's tools tell."""
    if entry is None:
        return "not indexed (never built, or evicted): a request builds it"
    if meta is None:
        return "its metadata is in another format or unreadable: a request rebuilds it"
    if not stored:
        return "its library is gone from the store (evicted or removed): a request builds it again"
    if current is not None and meta.toolchain and meta.toolchain != current:
        changed = sorted(name for name in {*meta.toolchain, *current} if meta.toolchain.get(name) != current.get(name))
        differences = ", ".join(f"{name} {meta.toolchain.get(name)}, here {current.get(name)}" for name in changed)
        return f"built with another toolchain ({differences}): a request on this host computes another key"
    return None


def _host_toolchain(config: FarmConfig) -> dict[str, str] | None:
    try:
        return tool_versions(config.compile_path)
    except FarmError:  # tools missing: nothing to compare
        return None
