"""Keeping the caches within bounds: eviction of the least recently used, on the local tier and the shared one.

Recency. Local tier (the cache directory: libraries in objects/, compiled modules in objcache/): a file's mtime,
which farm sets to now whenever it stores or hands out the file (LocalStore.fetch, UsedObjectCache.get), since
access times are not kept on most mounts (noatime, relatime). Shared tier (the cluster's index and store): the
index's last hit, or the build time of an artifact never hit (IndexedArtifact.last_used).

Order of removal: the index entry first, then the files or objects, so an entry never points at something
missing; if a request re-indexed the artifact in between, the entry is removed again once the object is gone.
An entry used after garbage collection began is kept (ArtifactIndex.forget's `unused_since`).

Readers survive evictions: whatever was used within the last `keep_recent` seconds stays (a build may still be
linking the object it was handed, a node may still be opening the library it fetched), and past that, an artifact
or object that vanishes under a reader is a miss that is rebuilt (builder.ArtifactBuilder, engine.Engine,
cluster.Coordinator), never an error.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

from farm.cache.index import ArtifactIndex
from farm.cache.objcache import UsedObjectCache
from farm.cache.store import ArtifactStore
from farm.cache.store.local import LocalStore, StoredFiles
from farm.errors import InvalidArgument
from farm.log import get_logger

log = get_logger(__name__)

# Seconds an artifact or object stays after its last use, whatever the limit: what is being used right now (an
# object handed to a build that is still linking, a library fetched and about to be opened) is not evicted. A
# reader that takes longer than this still does not fail: it rebuilds.
IN_USE_GRACE = 60.0


class Weighed(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def last_used(self) -> float: ...


W = TypeVar("W", bound=Weighed)


@dataclass(frozen=True)
class GcReport:
    """What one garbage collection did, on one tier."""

    tier: str  # "local" or "shared"
    bytes_before: int
    bytes_after: int
    artifacts_evicted: int = 0
    objects_evicted: int = 0  # compiled modules (local tier)
    entries_repaired: int = 0  # index entries whose files were already gone, removed
    kept_in_use: int = 0  # over the limit or too old, but used within the grace: kept

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Policy:
    """What to evict: what was last used more than `older_than` seconds ago, then the least recently used until at
    most `max_size` bytes are left; never the keys in `keep`, nor what was used in the last `keep_recent` seconds."""

    max_size: int | None = None
    older_than: float | None = None
    keep_recent: float = IN_USE_GRACE
    keep: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 0:
            raise InvalidArgument("max_size", self.max_size, "a number of bytes >= 0")
        if self.older_than is not None and self.older_than < 0:
            raise InvalidArgument("older_than", self.older_than, "a number of seconds >= 0")

    def choose(self, items: Iterable[W], now: float) -> tuple[list[W], int]:
        """The items to evict, least recently used first, and how many were spared only by the grace."""
        ordered = sorted(items, key=lambda item: (item.last_used, item.key))
        left = sum(item.size for item in ordered)
        chosen: list[W] = []
        spared = 0
        for item in ordered:
            too_old = self.older_than is not None and item.last_used < now - self.older_than
            too_big = self.max_size is not None and left > self.max_size
            if not (too_old or too_big) or item.key in self.keep:
                continue
            if item.last_used > now - self.keep_recent:
                spared += 1
                continue
            chosen.append(item)
            left -= item.size
        return chosen, spared


CLEAR = Policy(max_size=0, keep_recent=0.0)  # everything, now


@dataclass(frozen=True)
class LocalTier:
    """One host's cache directory. `index` points into `store` when the store is the embedded one; None when the
    store holds this node's copies of a shared store (S3): the shared index is not the local tier's to change."""

    store: LocalStore
    objects: UsedObjectCache
    index: ArtifactIndex | None

    @classmethod
    def of(cls, store: ArtifactStore, index: ArtifactIndex, objects: UsedObjectCache) -> LocalTier | None:
        """The local tier behind a builder's store: the store itself, or its local copies; None for a store that
        keeps no files here."""
        if isinstance(store, LocalStore):
            return cls(store, objects, index)
        local = getattr(store, "local", None)  # S3Store, MemoryStore: this node's copies
        return cls(local, objects, None) if isinstance(local, LocalStore) else None

    def size(self) -> int:
        return sum(item.size for item in (*self.store.stored(), *self.objects.stored()))


@dataclass(frozen=True)
class _Object:
    """A compiled module in the object cache, weighed like an artifact."""

    key: str
    size: int
    last_used: float


def gc_local(tier: LocalTier, policy: Policy, now: float | None = None) -> GcReport:
    started = time.time() if now is None else now
    artifacts = tier.store.stored()
    objects = [_Object(f.key, f.size, f.last_used) for f in tier.objects.stored()]
    items: list[StoredFiles | _Object] = [*artifacts, *objects]
    before = sum(item.size for item in items)
    chosen, spared = policy.choose(items, started)
    freed = evicted = 0
    for item in chosen:
        if isinstance(item, _Object):
            tier.objects.delete(item.key)
        elif not _evict_artifact(tier.index, tier.store, item.key, started):
            continue
        freed += item.size
        evicted += 1
    objects_evicted = sum(1 for item in chosen if isinstance(item, _Object))
    repaired = _repair_index(tier, {a.key for a in artifacts}) if tier.index is not None else 0
    return GcReport("local", before, before - freed, evicted - objects_evicted, objects_evicted, repaired, spared)


def gc_shared(index: ArtifactIndex, store: ArtifactStore, policy: Policy, now: float | None = None) -> GcReport:
    """The shared tier: artifacts as the index lists them; each evicted one leaves the index, then the store."""
    started = time.time() if now is None else now
    entries = index.artifacts()
    before = sum(entry.size for entry in entries)
    chosen, spared = policy.choose(entries, started)
    evicted = [entry for entry in chosen if _evict_artifact(index, store, entry.key, started)]
    return GcReport("shared", before, before - sum(entry.size for entry in evicted), len(evicted), kept_in_use=spared)


def _evict_artifact(index: ArtifactIndex | None, store: ArtifactStore, key: str, started: float) -> bool:
    """Index entry, then object; False when a request used it since `started` (it stays)."""
    if index is not None and not index.forget(key, unused_since=started) and index.meta(key) is not None:
        return False  # indexed, and used since: not forgotten
    store.delete(key)
    if index is not None and not store.exists(key):
        index.forget(key)  # a hit that came in between re-indexed it: its object is gone now, so its entry goes too
    return True


def _repair_index(tier: LocalTier, stored: set[str]) -> int:
    """Entries of the embedded index whose files were gone before this collection (removed by hand, a crash
    between two deletes) are removed: they would point at nothing."""
    assert tier.index is not None
    repaired = 0
    for entry in tier.index.artifacts():
        if entry.key not in stored and not tier.store.exists(entry.key) and tier.index.forget(entry.key):
            log.info("the index entry of artifact %s pointed at no files; removed it", entry.key[:12])
            repaired += 1
    return repaired
