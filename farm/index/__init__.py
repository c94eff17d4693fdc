"""Cache indexes: (pattern ID, target) -> content key, key -> metadata, and counters."""

from __future__ import annotations

from abc import ABC, abstractmethod

from farm.store import ArtifactMeta

COUNTERS = ("requests", "hits", "misses", "compilations_ok", "compilations_failed", "fallbacks")


class CacheIndex(ABC):
    @abstractmethod
    def lookup(self, pattern_id: str, target: str) -> str | None: ...

    @abstractmethod
    def meta(self, key: str) -> ArtifactMeta | None: ...

    @abstractmethod
    def record(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        """Point (pattern_id, target) at meta.key; called only after the artifact is stored."""

    @abstractmethod
    def forget(self, pattern_id: str, target: str) -> None: ...

    @abstractmethod
    def touch(self, key: str) -> None:
        """Note a hit (last-hit time)."""

    @abstractmethod
    def incr(self, counter: str, amount: float = 1) -> None: ...

    @abstractmethod
    def counters(self) -> dict[str, float]: ...

    @abstractmethod
    def entries(self) -> list[tuple[str, str, str]]:
        """(pattern_id, target, key) rows."""

    @abstractmethod
    def clear(self) -> None: ...
