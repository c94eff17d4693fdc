"""An in-process cluster index: RedisIndex's semantics (farm/cache/index/redis.py) held in this process's memory.

For tests and embedding, not a deployment: nothing outlives the process and no other process sees it, so no
configuration selects it (the embedded deployment's index is SQLite, the cluster's Redis). Pass it where an index
is taken: `Coordinator(config, app, index=..., store=...)`, `ArtifactBuilder(config, index, store)`, `Worker`.

Thread-safe (one lock over all state, re-entrant so the base class's composite updates are atomic as Redis's
pipelines are). Locks, delivery counts and shared modules expire as their Redis keys do; `clock` is injectable
so a test can move time on instead of sleeping. Metadata, dead letters and toolchains are kept as JSON text, as
Redis keeps them: a reader gets a fresh copy, and metadata of another format is a miss here too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from farm.cache.index import Claim, ClusterIndex, IndexedArtifact, WorkerStatus, indexed_from, least_recent_first
from farm.cache.store import ArtifactMeta, stored_meta

V = TypeVar("V")


class _Expiring(dict[str, tuple[V, float]]):
    """Values with a deadline (on the index's clock): an expired one reads as absent, like a Redis key past its TTL."""

    def live(self, name: str, now: float) -> V | None:
        entry = self.get(name)
        if entry is None:
            return None
        value, deadline = entry
        if deadline <= now:
            del self[name]
            return None
        return value

    def live_count(self, now: float) -> int:
        return sum(1 for name in list(self) if self.live(name, now) is not None)


class MemoryIndex(ClusterIndex):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._guard = threading.RLock()
        self._patterns: dict[tuple[str, str], str] = {}  # (pattern ID, target) -> content key
        self._metas: dict[str, str] = {}  # content key -> ArtifactMeta JSON
        self._last_hit: dict[str, float] = {}
        self._direct: dict[str, str] = {}  # direct-mode key -> content key
        self._counters: dict[str, float] = {}
        self._hot: dict[str, float] = {}
        self._locks: _Expiring[str] = _Expiring()  # content key -> the task ID holding it
        self._deliveries: _Expiring[int] = _Expiring()
        self._dead_letters: list[str] = []
        self._toolchains: _Expiring[str] = _Expiring()
        self._targets: set[str] = set()  # every target ever published, as Redis's farm:targets
        self._workers: _Expiring[str] = _Expiring()  # name -> WorkerStatus JSON
        self._modules: _Expiring[str] = _Expiring()

    # --- ArtifactIndex ---
    def lookup(self, pattern_id: str, target: str) -> str | None:
        with self._guard:
            return self._patterns.get((pattern_id, target))

    def meta(self, key: str) -> ArtifactMeta | None:
        with self._guard:
            text = self._metas.get(key)
        return stored_meta(text) if text is not None else None

    def record(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        with self._guard:
            self._metas[meta.key] = meta.to_json()
            self._patterns[(pattern_id, target)] = meta.key

    def lookup_direct(self, direct_key: str) -> str | None:
        with self._guard:
            return self._direct.get(direct_key)

    def record_direct(self, direct_key: str, key: str) -> None:
        with self._guard:
            self._direct[direct_key] = key

    def touch(self, key: str) -> None:
        with self._guard:
            self._last_hit[key] = time.time()

    def artifact_count(self) -> int:
        with self._guard:
            return len(self._metas)

    def artifact_bytes(self) -> int:
        with self._guard:
            return sum(int(json.loads(text)["size"]) for text in self._metas.values())

    def artifacts(self) -> list[IndexedArtifact]:
        with self._guard:
            return least_recent_first([self._entry(key) for key in self._metas])

    def _entry(self, key: str) -> IndexedArtifact:
        fields = json.loads(self._metas[key])
        return indexed_from(key, fields.get("size"), fields.get("target"), fields.get("created_at"),
                            self._last_hit.get(key))

    def forget(self, key: str, unused_since: float | None = None) -> bool:
        with self._guard:
            if key not in self._metas:
                return False
            if unused_since is not None and self._entry(key).last_used > unused_since:
                return False
            del self._metas[key]
            self._last_hit.pop(key, None)
            for place in [place for place, pointed in self._patterns.items() if pointed == key]:
                del self._patterns[place]
            for direct_key in [direct_key for direct_key, pointed in self._direct.items() if pointed == key]:
                del self._direct[direct_key]
            return True

    # --- Counters, and the base class's composite updates made atomic ---
    def incr(self, counter: str, amount: float = 1) -> None:
        with self._guard:
            self._counters[counter] = self._counters.get(counter, 0.0) + amount

    def counters(self) -> dict[str, float]:
        with self._guard:
            return dict(self._counters)

    def zero_counters(self) -> None:
        with self._guard:
            self._counters.clear()

    def note_hit(self, pattern_id: str, target: str, meta: ArtifactMeta, hot: bool = False) -> None:
        with self._guard:
            super().note_hit(pattern_id, target, meta, hot)

    def note_miss(self, pattern_id: str) -> None:
        with self._guard:
            super().note_miss(pattern_id)

    def note_build(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        with self._guard:
            super().note_build(pattern_id, target, meta)

    def note_build_if_new(self, pattern_id: str, target: str, meta: ArtifactMeta) -> bool:
        with self._guard:
            if meta.key in self._metas:
                return False
            self.note_build(pattern_id, target, meta)
            return True

    def hit_or_acquire(self, key: str, pattern_id: str, target: str, task_id: str, ttl: float,
                       evidence: str) -> Claim:
        with self._guard:
            return super().hit_or_acquire(key, pattern_id, target, task_id, ttl, evidence)

    # --- Coordination ---
    def note_hot(self, pattern_id: str, amount: float = 1) -> None:
        with self._guard:
            self._hot[pattern_id] = self._hot.get(pattern_id, 0.0) + amount

    def hot(self, top: int) -> list[tuple[str, float]]:
        with self._guard:
            ranked = sorted(self._hot.items(), key=lambda item: (item[1], item[0]), reverse=True)  # as ZREVRANGE
        return ranked[:max(top, 0)]

    def acquire(self, key: str, task_id: str, ttl: float) -> str:
        with self._guard:
            holder = self._locks.live(key, self.clock())
            if holder is None:
                self._locks[key] = (task_id, self.clock() + ttl)
                return task_id
            return holder

    def release(self, key: str, task_id: str) -> None:
        with self._guard:
            if self._locks.live(key, self.clock()) == task_id:  # only the holder's own lock
                del self._locks[key]

    def inflight(self) -> int:
        with self._guard:
            return self._locks.live_count(self.clock())

    def delivered(self, task_id: str, ttl: float) -> int:
        with self._guard:
            count = (self._deliveries.live(task_id, self.clock()) or 0) + 1
            self._deliveries[task_id] = (count, self.clock() + ttl)
            return count

    def ever_delivered(self, task_id: str) -> bool:
        with self._guard:
            return self._deliveries.live(task_id, self.clock()) is not None

    def dead_letter(self, record: dict[str, Any]) -> None:
        text = json.dumps(record)  # before taking anything: a record that is not JSON fails as it would in Redis
        with self._guard:
            self._dead_letters.append(text)
            self.incr("dead_letters")

    def dead_letters(self) -> list[dict[str, Any]]:
        with self._guard:
            texts = list(self._dead_letters)
        return [json.loads(text) for text in texts]

    def publish_toolchain(self, target: str, versions: dict[str, str], ttl: float | None = None) -> None:
        with self._guard:
            deadline = self.clock() + ttl if ttl is not None else float("inf")
            self._toolchains[target] = (json.dumps(versions, sort_keys=True), deadline)
            self._targets.add(target)

    def unpublish_toolchain(self, target: str) -> None:
        with self._guard:
            self._toolchains.pop(target, None)

    def toolchain(self, target: str) -> dict[str, str] | None:
        with self._guard:
            text = self._toolchains.live(target, self.clock())
        return json.loads(text) if text is not None else None

    def publish_worker(self, worker: WorkerStatus, ttl: float) -> None:
        with self._guard:
            self._workers[worker.name] = (worker.to_json(), self.clock() + ttl)

    def unpublish_worker(self, name: str) -> None:
        with self._guard:
            self._workers.pop(name, None)

    def workers(self) -> list[WorkerStatus]:
        with self._guard:
            texts = [self._workers.live(name, self.clock()) for name in sorted(self._workers)]
        return [WorkerStatus.from_json(text) for text in texts if text is not None]

    def queue_depths(self) -> dict[str, int]:
        """Every target ever served, its queue empty: there is no broker behind this index to hold messages."""
        with self._guard:
            return {target: 0 for target in sorted(self._targets)}

    def share_module(self, content_key: str, text: str, ttl: float) -> None:
        """As in Redis: a module already kept only lives `ttl` seconds more; its text is not replaced."""
        with self._guard:
            kept = self._modules.live(content_key, self.clock())
            self._modules[content_key] = (text if kept is None else kept, self.clock() + ttl)

    def shared_module(self, content_key: str) -> str | None:
        with self._guard:
            return self._modules.live(content_key, self.clock())
