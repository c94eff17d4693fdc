"""Embedded artifact store: a local directory, objects/<2 hex>/<key>.so with <key>.json beside it."""

from __future__ import annotations

from pathlib import Path

from farm.cache.store import ArtifactMeta, ArtifactStore, check_key, stored_meta
from farm.files import atomic_write


class LocalStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        folder = self.root / "objects" / key[:2]
        return folder / f"{key}.so", folder / f"{key}.json"

    def put(self, so_path: Path, meta: ArtifactMeta) -> None:
        so, js = self._paths(meta.key)
        atomic_write(so, source=so_path)
        atomic_write(js, meta.to_json().encode())

    def fetch(self, key: str) -> tuple[Path, ArtifactMeta] | None:
        so, js = self._paths(key)
        if not (so.exists() and js.exists()):
            return None
        meta = stored_meta(js.read_text(errors="replace"), key)
        return None if meta is None else (so, meta)

    def local_path(self, key: str) -> Path:
        return self._paths(key)[0]

    def exists(self, key: str) -> bool:
        so, js = self._paths(key)
        return so.exists() and js.exists()

    def delete(self, key: str) -> None:
        for p in self._paths(key):
            p.unlink(missing_ok=True)
