"""Cache indexes, by role: which artifact a (pattern ID, target) has and its metadata (ArtifactIndex);
counters of the work done (Counters: best effort, they never fail the work they count); and, for the
cluster, coordination between coordinators and workers (Coordination: locks, deliveries, dead letters, live
workers and the toolchains of the targets they serve, the hot set, shared modules). SQLite is the first two;
Redis is all three (ClusterIndex), and so is MemoryIndex (memory.py), its stand-in within one process. Callers
type against the role they use."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from farm.cache.store import ArtifactMeta
from farm.errors import IntegrityError

COUNTERS = ("requests", "hits", "misses", "compilations_ok", "compilations_failed", "fallbacks")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, math.inf)


def le(bound: float) -> str:
    """A histogram bucket's label, as Prometheus writes it."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def build_fields(target: str, meta: ArtifactMeta) -> dict[str, float]:
    """Counter increments for one successful compilation (both index backends apply these)."""
    fields: dict[str, float] = {"compilations_ok": 1, f"compilations_ok:{target}": 1,
                                "artifact_bytes_stored": meta.size}
    for stage, seconds in meta.stage_seconds.items():
        bound = next(b for b in BUCKETS if seconds <= b)
        fields[f"hist|{stage}|{target}|{le(bound)}"] = 1
        fields[f"hist_sum|{stage}|{target}"] = seconds
        fields[f"stage_seconds_{stage}"] = seconds
    return fields


@dataclass(frozen=True)
class IndexedArtifact:
    """One indexed artifact as garbage collection and `farm cache ls` see it: no metadata beyond what they need."""

    key: str
    size: int  # bytes of the library the store holds for it
    target: str
    created_at: float  # when it was built (the builder's clock, time.time())
    last_hit: float | None  # when a request last found it; None if none ever did

    @property
    def last_used(self) -> float:
        """Its recency: the last hit, or the build for an artifact never hit."""
        return self.created_at if self.last_hit is None else self.last_hit


def indexed_from(key: str, size: object, target: object, created_at: object, last_hit: object) -> IndexedArtifact:
    """An entry from stored fields, read leniently: metadata of another format or with odd fields is still listed
    (and so can be evicted), its unknown fields as zero or empty."""
    return IndexedArtifact(key, int(_number(size)), target if isinstance(target, str) else "",
                           _number(created_at), None if last_hit is None else _number(last_hit))


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, bytes)):
        return 0.0
    try:
        number = float(value)
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def least_recent_first(entries: list[IndexedArtifact]) -> list[IndexedArtifact]:
    return sorted(entries, key=lambda entry: (entry.last_used, entry.key))


class ArtifactIndex(ABC):
    @abstractmethod
    def lookup(self, pattern_id: str, target: str) -> str | None: ...

    @abstractmethod
    def meta(self, key: str) -> ArtifactMeta | None: ...

    @abstractmethod
    def record(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        """Point (pattern_id, target) at meta.key; called only after the artifact is stored."""

    @abstractmethod
    def touch(self, key: str) -> None:
        """Note a hit (last-hit time)."""

    @abstractmethod
    def lookup_direct(self, direct_key: str) -> str | None:
        """The content key a direct-mode key (farm/cache/direct.py) was last recorded with, if any."""

    @abstractmethod
    def record_direct(self, direct_key: str, key: str) -> None:
        """Map a direct-mode key to the content key of the library built from those inputs; `forget(key)` removes
        the entries still pointing at it."""

    @abstractmethod
    def artifact_count(self) -> int: ...

    @abstractmethod
    def artifact_bytes(self) -> int:
        """The indexed artifacts' total size (what the store holds for them)."""

    @abstractmethod
    def artifacts(self) -> list[IndexedArtifact]:
        """Every indexed artifact, least recently used first (what an eviction removes first)."""

    @abstractmethod
    def forget(self, key: str, unused_since: float | None = None) -> bool:
        """Remove the artifact's entry and every pattern and direct-mode key pointing at it, and take its size off
        the indexed bytes; the caller deletes the object afterwards, so no entry ever points at a missing object. With
        `unused_since`, only if it was not used after that time (a hit that came in since it was chosen for
        eviction keeps it). True if it was removed."""


class Counters(ABC):
    @abstractmethod
    def incr(self, counter: str, amount: float = 1) -> None: ...

    @abstractmethod
    def counters(self) -> dict[str, float]: ...

    @abstractmethod
    def zero_counters(self) -> None:
        """Start every counter again from zero (`farm stats --zero`). What measures the cache's contents rather
        than work done (the indexed bytes) is not a counter and stays."""


class CacheIndex(ArtifactIndex, Counters):
    """An index that also counts: what the artifact builder records a request, hit, miss or build in."""

    shared = False  # True for the cluster's index

    def note_hot(self, pattern_id: str, amount: float = 1) -> None:  # noqa: B027 - optional hook
        """Feed the hot-pattern ranking (requests, native firings); only the shared index keeps one."""

    def note_hit(self, pattern_id: str, target: str, meta: ArtifactMeta, hot: bool = False) -> None:
        """A request served from the store: point the pattern at the key and count it (and, with `hot`, feed
        the hot-pattern ranking); backends batch this into one write."""
        self.record(pattern_id, target, meta)
        self.touch(meta.key)
        self.incr("requests")
        self.incr("hits")
        if hot:
            self.note_hot(pattern_id)

    def note_miss(self, pattern_id: str) -> None:
        self.incr("requests")
        self.incr("misses")
        self.note_hot(pattern_id)

    def note_build(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        """A fresh artifact, already stored: index it and count the compilation and its stage times."""
        self.record(pattern_id, target, meta)
        for name, amount in build_fields(target, meta).items():
            self.incr(name, amount)

    @abstractmethod
    def note_build_if_new(self, pattern_id: str, target: str, meta: ArtifactMeta) -> bool:
        """note_build, only if the index has no entry for meta.key (readable or not; with one, nothing is done): a
        library stored by a builder that died before indexing it, found by another. Looking for the entry and
        indexing it are one atomic step, so of the finders racing to index it, one counts its compilation. True if
        this call did."""


@dataclass(frozen=True)
class WorkerStatus:
    """What a live worker says of itself on each heartbeat (`farm workers`). `seen`: when it said it (its clock,
    time.time()); `started` likewise."""

    name: str  # Celery's node name (unique per worker process)
    host: str
    pid: int
    targets: tuple[str, ...]
    toolchain: dict[str, str] = field(default_factory=dict)
    concurrency: int = 1
    inflight: int = 0  # tasks running now
    started: float = 0.0
    seen: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerStatus:
        fields = json.loads(text)
        return cls(**{**fields, "targets": tuple(fields["targets"])})


class Coordination(ABC):
    """What coordinators and workers share besides artifacts (farm/cluster/coordinator.py)."""

    @abstractmethod
    def acquire(self, key: str, task_id: str, ttl: float) -> str:
        """Take the single-flight lock for `key`; returns the task ID that holds it (ours or another's)."""

    @abstractmethod
    def release(self, key: str, task_id: str) -> None: ...

    @abstractmethod
    def delivered(self, task_id: str, ttl: float) -> int:
        """Count one more delivery of a compile message; the count expires with the message."""

    @abstractmethod
    def ever_delivered(self, task_id: str) -> bool: ...

    @abstractmethod
    def dead_letter(self, record: dict[str, Any]) -> None: ...

    @abstractmethod
    def dead_letters(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def publish_toolchain(self, target: str, versions: dict[str, str], ttl: float | None = None) -> None:
        """The target is served, with these tool versions; with `ttl`, for that many seconds unless published
        again (workers do on each heartbeat)."""

    @abstractmethod
    def toolchain(self, target: str) -> dict[str, str] | None:
        """The published versions of a target some worker serves now; None when none does."""

    def heartbeat(self, worker: WorkerStatus, ttl: float) -> None:
        """A worker is alive: listed by workers(), its targets served, for `ttl` seconds unless it beats again."""
        self.publish_worker(worker, ttl)
        for target in worker.targets:
            self.publish_toolchain(target, worker.toolchain, ttl)

    @abstractmethod
    def publish_worker(self, worker: WorkerStatus, ttl: float) -> None: ...

    @abstractmethod
    def workers(self) -> list[WorkerStatus]:
        """The live workers, by name."""

    def forget_worker(self, name: str) -> None:
        """A worker stopping: unlisted at once, and a target that no other live worker serves is unserved at
        once too (requests for it fail fast instead of waiting for the registration to lapse)."""
        gone = next((w for w in self.workers() if w.name == name), None)
        self.unpublish_worker(name)
        if gone is not None:
            still_served = {t for w in self.workers() for t in w.targets}
            for target in set(gone.targets) - still_served:
                self.unpublish_toolchain(target)

    @abstractmethod
    def unpublish_worker(self, name: str) -> None: ...

    @abstractmethod
    def unpublish_toolchain(self, target: str) -> None: ...

    @abstractmethod
    def hot(self, top: int) -> list[tuple[str, float]]: ...

    @abstractmethod
    def share_module(self, content_key: str, text: str, ttl: float) -> None: ...

    @abstractmethod
    def shared_module(self, content_key: str) -> str | None: ...

    @abstractmethod
    def queue_depths(self) -> dict[str, int]: ...

    @abstractmethod
    def inflight(self) -> int: ...


# What a caller of ClusterIndex.hit_or_acquire knows of an artifact's object: the shared store has it (STORED), it
# does not (GONE), nothing yet (UNKNOWN: no copy here, the store not asked); or the sha256 of the copy this node
# holds (ArtifactStore.held_sha256).
STORED = "stored"
GONE = "gone"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Claim:
    """What ClusterIndex.hit_or_acquire decided: a hit (`meta`); a miss (`holder`: the task that builds the artifact,
    the caller's or another's); or neither (`unsettled`), when the artifact is indexed but what the caller knows
    does not vouch for its object: nothing was counted or taken, and the caller asks the shared store and calls
    again with STORED or GONE."""

    meta: ArtifactMeta | None = None
    holder: str = ""

    @property
    def unsettled(self) -> bool:
        return self.meta is None and not self.holder


class ClusterIndex(CacheIndex, Coordination):
    """All three roles in one backend: what the cluster's coordinators and workers share (RedisIndex; MemoryIndex
    within one process)."""

    shared = True

    def hit_or_acquire(self, key: str, pattern_id: str, target: str, task_id: str, ttl: float,
                       evidence: str) -> Claim:
        """A coordinator's request for `key`, decided and counted in one step (RedisIndex: one round trip). A hit
        when the index has the artifact's metadata (in this format) and `evidence` vouches for its object: STORED, or
        the sha256 of this node's copy when the metadata names those bytes; counted as note_hit(hot=True). No usable
        metadata, or GONE: a miss, counted as note_miss, and the single-flight lock taken as acquire() takes it.
        Indexed, with UNKNOWN or a copy of other bytes: Claim.unsettled. Backends make this atomic; this composition
        of the other methods is what it does."""
        try:
            meta = self.meta(key)
        except IntegrityError:  # unreadable metadata: a miss, rebuilt and indexed again, as another format's
            meta = None
        if meta is not None and evidence != GONE:
            if evidence not in (STORED, meta.sha256):
                return Claim()
            self.note_hit(pattern_id, target, meta, hot=True)
            return Claim(meta)
        self.note_miss(pattern_id)
        return Claim(holder=self.acquire(key, task_id, ttl))
