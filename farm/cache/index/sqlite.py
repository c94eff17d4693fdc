"""Embedded cache index: one SQLite file shared by every process on the machine (WAL, one transaction per write).

The index is a cache: a file SQLite reports corrupt, or whose tables are not the ones farm creates, is moved
aside (`index.sqlite.corrupt-<time>-<pid>`, with its -wal/-shm files), a warning is logged, and an empty index
takes its place, whether that is found on opening or by any later query.

The file's `PRAGMA user_version` is the version of its tables (SCHEMA_VERSION). A file of another version, older
or newer, has its tables dropped and created afresh on opening (every entry a miss, rebuilt on request), never
read; a file from before versions (0) has version 1's tables and is stamped.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from farm.cache.index import CacheIndex, IndexedArtifact, build_fields, indexed_from, least_recent_first
from farm.cache.store import ArtifactMeta, stored_meta
from farm.errors import WorkDirError
from farm.locks import file_lock
from farm.log import get_logger

log = get_logger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS patterns (pattern_id TEXT NOT NULL, target TEXT NOT NULL, key TEXT NOT NULL,
                                            PRIMARY KEY (pattern_id, target))""",
    "CREATE TABLE IF NOT EXISTS artifacts (key TEXT PRIMARY KEY, meta TEXT NOT NULL, last_hit REAL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL)",
    # direct-mode key (farm/cache/direct.py) -> content key; by content key too, so an eviction finds its entries
    "CREATE TABLE IF NOT EXISTS direct (direct_key TEXT PRIMARY KEY, key TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS direct_by_key ON direct (key)",
)
# Raise it with any change to SCHEMA or to what its columns mean: files of another version are recreated.
# 2: the direct table.
SCHEMA_VERSION = 2
# SQLite's user_version of a new file, and of farm's files from before versions (version 1's tables, to which the
# direct table is added)
UNVERSIONED = 0
TABLES = ("patterns", "artifacts", "counters", "direct")
SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's companions of a database file, moved aside with it


class CorruptIndex(Exception):
    """Internal: the file is not farm's index; never leaves this module (the index is rebuilt instead)."""


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """SQLite's own verdict (its primary result code), not a reading of the message."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _table_shape(db: sqlite3.Connection, table: str) -> tuple[object, ...]:
    """A table's columns (name, type, not null, default, key position) and unique keys, as SQLite reports them."""
    columns = tuple(db.execute(f"PRAGMA table_info({table})"))
    keys = sorted((origin, tuple(col[2] for col in db.execute("SELECT * FROM pragma_index_info(?)", (name,))))
                  for _, name, unique, origin, _ in db.execute(f"PRAGMA index_list({table})") if unique)
    return columns, tuple(keys)


def _create_tables(db: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        db.execute(statement)


def _user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


@functools.cache
def _expected_shapes() -> dict[str, tuple[object, ...]]:
    db = sqlite3.connect(":memory:")
    _create_tables(db)
    shapes = {table: _table_shape(db, table) for table in TABLES}
    db.close()
    return shapes


def _check_file(db: sqlite3.Connection) -> int:
    """The file's schema version. In a file of this version or from before versions, each of farm's tables present
    must be exactly what SCHEMA creates (absent ones are created); a file of another version is not checked: its
    tables are replaced."""
    try:
        version = _user_version(db)
        present = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        # A plain SQLITE_ERROR from these fixed queries is about the file (e.g. "unsupported file format"): the
        # environment's failures have codes of their own (CANTOPEN, IOERR, BUSY, READONLY, ...).
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_ERROR:
            raise CorruptIndex(str(exc)) from None
        raise
    if version not in (UNVERSIONED, SCHEMA_VERSION):
        return version
    for table, shape in _expected_shapes().items():
        if table in present and _table_shape(db, table) != shape:
            raise CorruptIndex(f"table {table!r} is not the one farm creates")
    return version


def _settle_schema(db: sqlite3.Connection, version: int, path: Path) -> None:
    """Create absent tables; in a file of another version, first drop farm's tables (what they hold would be
    misread); then stamp SCHEMA_VERSION. One write transaction, so concurrent openers settle it once."""
    if version == SCHEMA_VERSION:
        _create_tables(db)
        return
    with db:
        db.execute("BEGIN IMMEDIATE")
        version = _user_version(db)  # again under the write lock: another process may have settled it meanwhile
        if version not in (UNVERSIONED, SCHEMA_VERSION):
            log.warning("the cache index %s has schema version %d, this farm reads version %d; recreating its "
                        "tables (a cache: entries come back as artifacts are requested)", path, version,
                        SCHEMA_VERSION)
            named = ", ".join("?" * len(TABLES))
            objects = db.execute(f"SELECT type, name FROM sqlite_master WHERE name IN ({named})", TABLES).fetchall()
            for kind, name in objects:
                db.execute(f"DROP {kind} {name}")  # both from fixed sets: SQLite's object types, TABLES
        _create_tables(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _recovering(method: Callable[Concatenate[SQLiteIndex, P], R]) -> Callable[Concatenate[SQLiteIndex, P], R]:
    """Run a query; if SQLite finds the file corrupt, move it aside, start an empty index and run it again."""
    @functools.wraps(method)
    def run(self: SQLiteIndex, *args: P.args, **kwargs: P.kwargs) -> R:
        db = self._db
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._recover(db, str(exc))
            return method(self, *args, **kwargs)

    return run


class SQLiteIndex(CacheIndex):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._reopen = threading.Lock()
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file this connection opened
        try:
            self._db = self._connect()
        except (sqlite3.DatabaseError, CorruptIndex) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and not _is_corrupt(exc):
                raise WorkDirError(f"cannot open the cache index {self.path}: {exc}") from None
            self._quarantine(str(exc))
            self._db = self._connect_or_fail()

    def _connect(self) -> sqlite3.Connection:
        """Open (creating if need be) and check the index; raises CorruptIndex or sqlite3.DatabaseError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkDirError(f"cannot open the cache index {self.path}: {exc.strerror or exc}") from None
        self._identity = _file_identity(self.path)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        # Closed when this index goes, or at exit if it is still there: a connection is in a reference cycle (its
        # statement cache), which only the cyclic collector would otherwise close; closing the last connection
        # checkpoints the WAL into the file.
        weakref.finalize(self, db.close)
        try:
            version = _check_file(db)  # before writing anything: a file that is not farm's is moved aside as it was
            db.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL never corrupts; a crash may drop the last counts, not entries' files.
            db.execute("PRAGMA synchronous=NORMAL")
            _settle_schema(db, version, self.path)
            self._identity = _file_identity(self.path)
        except BaseException:
            db.close()
            raise
        return db

    def _connect_or_fail(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except (sqlite3.DatabaseError, CorruptIndex) as exc:
            raise WorkDirError(f"cannot open the cache index {self.path}: {exc}") from None

    def _recover(self, failed: sqlite3.Connection, reason: str) -> None:
        with self._reopen:
            if self._db is not failed:  # another thread has recovered already
                return
            self._db.close()
            self._quarantine(reason)
            self._db = self._connect_or_fail()

    def _quarantine(self, reason: str) -> None:
        """Move the bad file aside, unless another process already did (the path then names a new index)."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            if _file_identity(self.path) != self._identity or self._identity is None:
                return
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            try:
                for suffix in ("", *SIDE_FILES):
                    source = self.path.with_name(self.path.name + suffix)
                    if source.exists():
                        source.rename(aside.with_name(aside.name + suffix))
            except OSError as exc:
                raise WorkDirError(f"the cache index {self.path} is unreadable ({reason}) and cannot be moved "
                                   f"aside: {exc.strerror or exc}") from None
        log.warning("the cache index %s is unreadable (%s); moved it to %s and started an empty index "
                    "(a cache: entries come back as artifacts are requested)", self.path, reason, aside.name)

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

    @_recovering
    def lookup(self, pattern_id: str, target: str) -> str | None:
        row = self._db.execute("SELECT key FROM patterns WHERE pattern_id=? AND target=?",
                               (pattern_id, target)).fetchone()
        return row[0] if row else None

    @_recovering
    def meta(self, key: str) -> ArtifactMeta | None:
        row = self._db.execute("SELECT meta FROM artifacts WHERE key=?", (key,)).fetchone()
        return stored_meta(row[0]) if row else None

    @_recovering
    def record(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        with self._transaction() as db:
            self._record(db, pattern_id, target, meta)

    @staticmethod
    def _record(db: sqlite3.Connection, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        db.execute(_INSERT_ARTIFACT + "UPDATE SET meta = excluded.meta", (meta.key, meta.to_json()))
        SQLiteIndex._point(db, pattern_id, target, meta.key)

    @staticmethod
    def _point(db: sqlite3.Connection, pattern_id: str, target: str, key: str) -> None:
        db.execute("INSERT OR REPLACE INTO patterns(pattern_id, target, key) VALUES (?, ?, ?)",
                   (pattern_id, target, key))

    @staticmethod
    def _add(db: sqlite3.Connection, counters: dict[str, float]) -> None:
        db.executemany("INSERT INTO counters(name, value) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", counters.items())

    @_recovering
    def note_hit(self, pattern_id: str, target: str, meta: ArtifactMeta, hot: bool = False) -> None:
        with self._transaction() as db:
            self._record(db, pattern_id, target, meta)
            db.execute("UPDATE artifacts SET last_hit=? WHERE key=?", (time.time(), meta.key))
            self._add(db, {"requests": 1, "hits": 1})

    @_recovering
    def note_miss(self, pattern_id: str) -> None:
        with self._transaction() as db:
            self._add(db, {"requests": 1, "misses": 1})

    @_recovering
    def note_build(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        with self._transaction() as db:
            self._record(db, pattern_id, target, meta)
            self._add(db, build_fields(target, meta))

    @_recovering
    def note_build_if_new(self, pattern_id: str, target: str, meta: ArtifactMeta) -> bool:
        with self._transaction() as db:
            if not db.execute(_INSERT_ARTIFACT + "NOTHING", (meta.key, meta.to_json())).rowcount:
                return False  # indexed already (the indexed bytes are the entries' sizes: nothing to add either)
            self._point(db, pattern_id, target, meta.key)
            self._add(db, build_fields(target, meta))
            return True

    @_recovering
    def lookup_direct(self, direct_key: str) -> str | None:
        row = self._db.execute("SELECT key FROM direct WHERE direct_key=?", (direct_key,)).fetchone()
        return row[0] if row else None

    @_recovering
    def record_direct(self, direct_key: str, key: str) -> None:
        self._write("INSERT OR REPLACE INTO direct(direct_key, key) VALUES (?, ?)", direct_key, key)

    @_recovering
    def touch(self, key: str) -> None:
        self._write("UPDATE artifacts SET last_hit=? WHERE key=?", time.time(), key)

    @_recovering
    def incr(self, counter: str, amount: float = 1) -> None:
        with self._transaction() as db:
            self._add(db, {counter: amount})

    @_recovering
    def counters(self) -> dict[str, float]:
        return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    @_recovering
    def artifact_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0])

    @_recovering
    def artifact_bytes(self) -> int:
        return int(self._db.execute("SELECT TOTAL(json_extract(meta, '$.size')) FROM artifacts").fetchone()[0])

    @_recovering
    def artifacts(self) -> list[IndexedArtifact]:
        rows = self._db.execute("SELECT key, json_extract(meta, '$.size'), json_extract(meta, '$.target'), "
                                "json_extract(meta, '$.created_at'), last_hit FROM artifacts").fetchall()
        return least_recent_first([indexed_from(*row) for row in rows])

    @_recovering
    def forget(self, key: str, unused_since: float | None = None) -> bool:
        with self._transaction() as db:
            if unused_since is not None and db.execute(f"SELECT 1 FROM artifacts WHERE key=? AND {_LAST_USED} > ?",
                                                       (key, unused_since)).fetchone():
                return False
            db.execute("DELETE FROM patterns WHERE key=?", (key,))
            db.execute("DELETE FROM direct WHERE key=?", (key,))
            return db.execute("DELETE FROM artifacts WHERE key=?", (key,)).rowcount > 0

    @_recovering
    def zero_counters(self) -> None:
        self._write("DELETE FROM counters")


# An artifact's entry, new or, after it, what to do with one already there: "UPDATE SET ..." or "NOTHING".
_INSERT_ARTIFACT = "INSERT INTO artifacts(key, meta, last_hit) VALUES (?, ?, NULL) ON CONFLICT(key) DO "
# An artifact's recency in SQL, as IndexedArtifact.last_used has it.
_LAST_USED = "COALESCE(last_hit, json_extract(meta, '$.created_at'), 0)"


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
