"""Embedded cache index: one SQLite file shared by every process on the machine (WAL, one transaction per write)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from farm.errors import WorkDirError
from farm.index import CacheIndex
from farm.metrics import build_fields
from farm.store import ArtifactMeta

SCHEMA = """
CREATE TABLE IF NOT EXISTS patterns (pattern_id TEXT NOT NULL, target TEXT NOT NULL, key TEXT NOT NULL,
                                     PRIMARY KEY (pattern_id, target));
CREATE TABLE IF NOT EXISTS artifacts (key TEXT PRIMARY KEY, meta TEXT NOT NULL, last_hit REAL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


class SQLiteIndex(CacheIndex):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL never corrupts; a crash may drop the last counts, not entries' files.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.OperationalError) as exc:
            raise WorkDirError(f"cannot open the cache index {self.path}: {exc}") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; every multi-row update goes through here so readers see all or nothing."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
        except sqlite3.OperationalError as exc:
            raise WorkDirError(f"cannot write the cache index {self.path}: {exc}") from None

    def _write(self, sql: str, *params: object) -> None:
        with self._transaction() as db:
            db.execute(sql, params)

    def lookup(self, pattern_id: str, target: str) -> str | None:
        row = self._db.execute("SELECT key FROM patterns WHERE pattern_id=? AND target=?",
                               (pattern_id, target)).fetchone()
        return row[0] if row else None

    def meta(self, key: str) -> ArtifactMeta | None:
        row = self._db.execute("SELECT meta FROM artifacts WHERE key=?", (key,)).fetchone()
        return ArtifactMeta.from_json(row[0]) if row else None

    def record(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        with self._transaction() as db:
            self._record(db, pattern_id, target, meta)

    @staticmethod
    def _record(db: sqlite3.Connection, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        db.execute("INSERT INTO artifacts(key, meta, last_hit) VALUES (?, ?, NULL) "
                   "ON CONFLICT(key) DO UPDATE SET meta = excluded.meta", (meta.key, meta.to_json()))
        db.execute("INSERT OR REPLACE INTO patterns(pattern_id, target, key) VALUES (?, ?, ?)",
                   (pattern_id, target, meta.key))

    @staticmethod
    def _add(db: sqlite3.Connection, counters: dict[str, float]) -> None:
        db.executemany("INSERT INTO counters(name, value) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", counters.items())

    def note_hit(self, pattern_id: str, target: str, meta: ArtifactMeta, hot: bool = False) -> None:
        with self._transaction() as db:
            self._record(db, pattern_id, target, meta)
            db.execute("UPDATE artifacts SET last_hit=? WHERE key=?", (time.time(), meta.key))
            self._add(db, {"requests": 1, "hits": 1})

    def note_miss(self, pattern_id: str) -> None:
        with self._transaction() as db:
            self._add(db, {"requests": 1, "misses": 1})

    def note_build(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        with self._transaction() as db:
            self._record(db, pattern_id, target, meta)
            self._add(db, build_fields(target, meta))

    def forget(self, pattern_id: str, target: str) -> None:
        self._write("DELETE FROM patterns WHERE pattern_id=? AND target=?", pattern_id, target)

    def touch(self, key: str) -> None:
        self._write("UPDATE artifacts SET last_hit=? WHERE key=?", time.time(), key)

    def incr(self, counter: str, amount: float = 1) -> None:
        with self._transaction() as db:
            self._add(db, {counter: amount})

    def counters(self) -> dict[str, float]:
        return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    def artifact_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0])

    def entries(self) -> list[tuple[str, str, str]]:
        return list(self._db.execute("SELECT pattern_id, target, key FROM patterns ORDER BY pattern_id, target"))

    def clear(self) -> None:
        with self._transaction() as db:
            for table in ("patterns", "artifacts", "counters"):
                db.execute(f"DELETE FROM {table}")
