"""An in-process artifact store: libraries and their metadata held in memory, shared by every store over the same
MemoryBucket, as nodes share an S3 bucket (farm/cache/store/s3.py).

For tests and embedding, not a deployment: no configuration selects it. A library is loaded from a file, so, like
S3Store, each store hands out its node's own copy under `root` (written on fetch, verified by the loader).
"""

from __future__ import annotations

import threading
from pathlib import Path

from farm.cache.store import ArtifactMeta, ArtifactStore, check_key, stored_meta
from farm.cache.store.local import LocalStore
from farm.files import atomic_write


class MemoryBucket:
    """Content key -> (library bytes, metadata JSON), both stored in one step: no reader sees one without the other."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._objects: dict[str, tuple[bytes, str]] = {}

    def put(self, key: str, data: bytes, meta_json: str) -> None:
        with self._guard:
            self._objects[key] = (data, meta_json)

    def get(self, key: str) -> tuple[bytes, str] | None:
        with self._guard:
            return self._objects.get(key)

    def __contains__(self, key: str) -> bool:
        with self._guard:
            return key in self._objects

    def delete(self, key: str) -> None:
        with self._guard:
            self._objects.pop(key, None)


class MemoryStore(ArtifactStore):
    def __init__(self, root: Path, bucket: MemoryBucket | None = None) -> None:
        """root: this node's copies of the libraries; bucket: the shared objects (a new, empty one by default)."""
        self.bucket = bucket if bucket is not None else MemoryBucket()
        self.local = LocalStore(root)  # only for where its copies live: the bucket is the truth

    def put(self, so_path: Path, meta: ArtifactMeta) -> None:
        data = Path(so_path).read_bytes()
        self.bucket.put(check_key(meta.key), data, meta.to_json())
        atomic_write(self.local_path(meta.key), data)

    def fetch(self, key: str) -> tuple[Path, ArtifactMeta] | None:
        found = self.bucket.get(check_key(key))
        meta = stored_meta(found[1], key) if found is not None else None
        if found is None or meta is None:
            return None
        path = self.local_path(key)
        if not (path.exists() and path.read_bytes() == found[0]):  # absent, or not the bucket's: copied afresh
            atomic_write(path, found[0])
        return path, meta

    def exists(self, key: str) -> bool:
        return check_key(key) in self.bucket

    def local_path(self, key: str) -> Path:
        return self.local.local_path(key)

    def delete(self, key: str) -> None:
        self.bucket.delete(check_key(key))
        self.local_path(key).unlink(missing_ok=True)
