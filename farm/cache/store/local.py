"""Embedded artifact store: a local directory, objects/<2 hex>/<key>.so with <key>.json beside it.

A fetch sets the library's modification time to now: its mtime is when it was last used (stored or fetched),
the recency that garbage collection (farm/cache/gc.py) evicts by. farm sets it itself because access times are
not kept on most mounts (noatime, relatime)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from farm.cache.store import ArtifactMeta, ArtifactStore, check_key, stored_meta
from farm.files import atomic_write


@dataclass(frozen=True)
class StoredFiles:
    """One artifact's files in a local store: what garbage collection weighs and orders."""

    key: str
    size: int  # bytes of the library and its metadata
    last_used: float  # the library's mtime


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
        if meta is None:
            return None
        mark_used(so)
        return so, meta

    def local_path(self, key: str) -> Path:
        return self._paths(key)[0]

    def exists(self, key: str) -> bool:
        so, js = self._paths(key)
        return so.exists() and js.exists()

    def delete(self, key: str) -> None:
        """The metadata first: what a reader takes as the sign that the library is there goes before it does."""
        for p in reversed(self._paths(key)):
            p.unlink(missing_ok=True)

    def stored(self) -> list[StoredFiles]:
        """Every artifact with a file here (either file: half of a pair is listed, so it can be removed too)."""
        return keyed_files(self.root / "objects", ("so", "json"))


def keyed_files(root: Path, suffixes: tuple[str, ...]) -> list[StoredFiles]:
    """Files named root/<2 hex>/<key>.<suffix>, grouped by key (the layout of the local store and the object
    cache); anything else there (temp files of a write in progress) is left out. A key's last use is its first
    suffix's file's mtime (the library, the object: what is marked used), else its newest file's."""
    found: dict[str, list[tuple[str, os.stat_result]]] = {}
    for folder in _subfolders(root):
        for entry in _entries(folder):
            key, dot, suffix = entry.name.partition(".")
            stat = _stat(entry) if dot and suffix in suffixes and _is_key(key) else None
            if stat is not None:
                found.setdefault(key, []).append((suffix, stat))
    return [StoredFiles(key, sum(s.st_size for _, s in files), _last_used(files, suffixes[0]))
            for key, files in found.items()]


def _last_used(files: list[tuple[str, os.stat_result]], primary: str) -> float:
    marked = [stat.st_mtime for suffix, stat in files if suffix == primary]
    return max(marked or [stat.st_mtime for _, stat in files])


def mark_used(path: Path) -> None:
    """Set the file's mtime to now; best effort (a file another process just removed stays removed)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _is_key(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _subfolders(root: Path) -> list[Path]:
    return [Path(entry.path) for entry in _entries(root) if entry.is_dir(follow_symlinks=False)]


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:  # removed meanwhile
        return None
