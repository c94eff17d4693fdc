"""The object cache as the cache layer keeps it: compiled modules by content key (objcache/<2 hex>/<key>.o), each
with its last use as its mtime, so garbage collection can evict the least recently used.

The toolchain's ObjectCache (farm/compiler/toolchain.py) only gets and puts; this one also marks each object it
hands out as used now, lists and deletes them, and remembers which objects it lent to the current thread's build
(found or just compiled): an object evicted between being handed out and being linked makes that link fail, and
the builder then builds again without the object cache (`lent_objects_missing`) instead of failing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from farm.cache.store.local import StoredFiles, keyed_files, mark_used
from farm.compiler.toolchain import ObjectCache


class UsedObjectCache(ObjectCache):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._lent = threading.local()

    def get(self, key: str) -> Path | None:
        path = super().get(key)
        if path is not None:
            mark_used(path)
            self._lend(path)
        return path

    def put(self, key: str, source: Path | bytes) -> Path:
        return self._lend(super().put(key, source))  # a build links what it just cached, from the cache

    def _lend(self, path: Path) -> Path:
        lent: list[Path] | None = getattr(self._lent, "paths", None)
        if lent is not None:
            lent.append(path)
        return path

    @contextmanager
    def lending(self) -> Iterator[list[Path]]:
        """The objects handed out to this thread inside the block."""
        lent: list[Path] = []
        self._lent.paths = lent
        try:
            yield lent
        finally:
            self._lent.paths = None

    def stored(self) -> list[StoredFiles]:
        return keyed_files(self.root, ("o", "sha256"))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        self.digest_path(key).unlink(missing_ok=True)


def lent_objects_missing(lent: list[Path]) -> bool:
    return any(not path.exists() for path in lent)
