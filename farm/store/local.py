"""Embedded artifact store: a local directory, objects/<2 hex>/<key>.so with <key>.json beside it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from farm.errors import WorkDirError
from farm.store import ArtifactMeta, ArtifactStore, check_key, stored_meta


def atomic_write(path: Path, data: bytes | None = None, source: Path | None = None, *, mode: int | None = None,
                 exclusive: bool = False) -> None:
    """Write to a temp file in the same directory, then rename: readers see all or nothing.

    The file is created mode 0600 (mkstemp) unless `mode` is given. exclusive: never replace an existing file;
    FileExistsError instead (a hard link, not a rename, puts it in place: the check and the write are one step)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if mode is not None:
                    os.fchmod(out.fileno(), mode)
                if source is not None:
                    with open(source, "rb") as src:
                        shutil.copyfileobj(src, out)
                else:
                    out.write(data or b"")
                out.flush()
                os.fsync(out.fileno())
            if exclusive:
                os.link(tmp, path)
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except FileExistsError:
        raise
    except OSError as exc:
        raise WorkDirError(f"cannot write {path}: {exc.strerror or exc}") from None


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
