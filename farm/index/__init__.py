"""Cache indexes: (pattern ID, target) -> content key, key -> metadata, and counters."""

from __future__ import annotations

from abc import ABC, abstractmethod

from farm.store import ArtifactMeta

COUNTERS = ("requests", "hits", "misses", "compilations_ok", "compilations_failed", "fallbacks")


class CacheIndex(ABC):
    shared = False  # True for the cluster's index: it also has queues, locks and the hot set

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
    def incr(self, counter: str, amount: float = 1) -> None: ...

    @abstractmethod
    def counters(self) -> dict[str, float]: ...

    @abstractmethod
    def artifact_count(self) -> int: ...

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
        from farm.metrics import build_fields

        self.record(pattern_id, target, meta)
        for name, amount in build_fields(target, meta).items():
            self.incr(name, amount)
