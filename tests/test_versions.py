"""Schema and format versions: an index file or artifact metadata of another version is a cache miss followed by a
rebuild that works, never an exception and never a misread (issue 12, item 5)."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from farm.cache import keys
from farm.cache.builder import Artifact, ArtifactBuilder
from farm.cache.engine import Engine, load_native
from farm.cache.index.redis import RedisIndex
from farm.cache.index.sqlite import SCHEMA, SCHEMA_VERSION, SQLiteIndex
from farm.cache.store import FORMAT_VERSION, ArtifactMeta
from farm.cache.store.s3 import S3Store
from farm.config import FarmConfig
from farm.lang.terms import TermGraph

from .conftest import ruleset_of
from .servers import redis_server, s3_server

RULES = ruleset_of("rule r: (f ?x) => (g ?x)")
TERMS = "(f (f 3))"


def _meta(i: int) -> ArtifactMeta:
    return ArtifactMeta(key=f"{i:064x}", sha256="0" * 64, size=i, target="x86-64", triple="x86_64-pc-linux-gnu",
                        cpu="x86-64", opt_level=0, created_at=1.0)


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def _set_user_version(path: Path, version: int) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


def _without_format(meta: ArtifactMeta) -> str:
    """The metadata as farm wrote it before formats were numbered."""
    data = json.loads(meta.to_json())
    del data["format_version"]
    return json.dumps(data)


def _index_file(path: Path, version: int, tables: str, meta_json: str) -> None:
    """An index file holding pattern "p" -> _meta(1), with `tables` "current" (SCHEMA) or "other" ones."""
    db = sqlite3.connect(path)
    if tables == "current":
        for statement in SCHEMA:
            db.execute(statement)
        db.execute("INSERT INTO patterns VALUES ('p', 'x86-64', ?)", (_meta(1).key,))
        db.execute("INSERT INTO artifacts VALUES (?, ?, NULL)", (_meta(1).key, meta_json))
        db.execute("INSERT INTO counters VALUES ('hits', 5)")
    else:  # what some other version might hold under the same names
        db.execute("CREATE TABLE patterns (id INTEGER PRIMARY KEY, body BLOB)")
        db.execute("INSERT INTO patterns VALUES (1, x'00ff')")
        db.execute("CREATE VIEW counters AS SELECT 'hits' AS name, 5 AS value")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


# --- the SQLite index's schema version -------------------------------------------------------------------------

@pytest.mark.parametrize("tables", ["current", "other"])
@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99, -1])
def test_index_of_another_schema_version_is_recreated_never_read(version: int, tables: str, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "index.sqlite"
    _index_file(path, version, tables, _meta(1).to_json())
    with caplog.at_level(logging.WARNING):
        index = SQLiteIndex(path)
    assert index.lookup("p", "x86-64") is None and index.meta(_meta(1).key) is None  # a miss, not a misread
    assert index.counters() == {} and index.artifact_count() == 0
    assert _user_version(path) == SCHEMA_VERSION
    assert not list(tmp_path.glob("index.sqlite.corrupt-*"))  # recreated in place: not taken for corruption
    assert any(f"schema version {version}," in r.getMessage() for r in caplog.records)
    index.note_build("p", "x86-64", _meta(2))  # the rebuild works ...
    assert SQLiteIndex(path).lookup("p", "x86-64") == _meta(2).key  # ... and a second opener keeps it


def test_index_from_before_versions_is_stamped_and_its_old_metadata_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    _index_file(path, 0, "current", _without_format(_meta(1)))
    index = SQLiteIndex(path)
    assert _user_version(path) == SCHEMA_VERSION
    assert index.lookup("p", "x86-64") == _meta(1).key  # content keys stay valid: the tables are version 1's
    assert index.meta(_meta(1).key) is None  # the metadata is from before formats: a miss
    index.note_build("p", "x86-64", _meta(1))
    assert index.meta(_meta(1).key) == _meta(1)


def test_engine_rebuilds_an_index_of_another_version(tmp_path: Path) -> None:
    config = FarmConfig(cache_dir=tmp_path / "cache", opt_level=0)
    first = Engine(config).compile(RULES, "p", "x86-64")
    _set_user_version(config.cache_dir / "index.sqlite", SCHEMA_VERSION + 1)
    engine = Engine(config)
    assert engine.builder.index.lookup("p", "x86-64") is None
    again = engine.compile(RULES, "p", "x86-64")
    assert again.meta.key == first.meta.key and engine.builder.index.lookup("p", "x86-64") == first.meta.key
    assert engine.builder.index.meta(first.meta.key) == again.meta
    _rewrites(again)


# --- the artifact metadata's format ------------------------------------------------------------------------------

FORMATS: dict[str, Callable[[dict[str, object]], None]] = {
    "missing": lambda data: data.pop("format_version"),
    "older": lambda data: data.update(format_version=FORMAT_VERSION - 1),
    "newer": lambda data: data.update(format_version=FORMAT_VERSION + 1),
    "null": lambda data: data.update(format_version=None),
    "text": lambda data: data.update(format_version=str(FORMAT_VERSION)),
    "float": lambda data: data.update(format_version=float(FORMAT_VERSION)),
    "bool": lambda data: data.update(format_version=True),
}


def _reformatted(meta_json: str, change: str) -> str:
    data = json.loads(meta_json)
    FORMATS[change](data)
    return json.dumps(data)


def _rewrites(artifact: Artifact) -> None:
    native = load_native(RULES, artifact)
    graph = TermGraph(RULES.make_signature())
    assert native.rewrite(graph, graph.parse(TERMS)).texts() == ["(g (g 3))"]


@pytest.mark.parametrize("change", FORMATS)
def test_local_metadata_of_another_format_is_a_miss_then_rebuilt(change: str, tmp_path: Path) -> None:
    engine = Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=0))
    built = engine.compile(RULES, "p", "x86-64")
    meta_file = built.path.with_suffix(".json")
    meta_file.write_text(_reformatted(meta_file.read_text(), change))
    index = engine.builder.index
    assert isinstance(index, SQLiteIndex)
    with index._transaction() as db:  # the index row as an older or newer farm would have written it
        db.execute("UPDATE artifacts SET meta=?", (_reformatted(built.meta.to_json(), change),))
    assert engine.builder.store.fetch(built.meta.key) is None and index.meta(built.meta.key) is None
    again = engine.compile(RULES, "p", "x86-64")
    assert not again.cached and again.meta.format_version == FORMAT_VERSION
    assert json.loads(meta_file.read_text())["format_version"] == FORMAT_VERSION
    assert index.meta(built.meta.key) == again.meta
    _rewrites(again)


@pytest.fixture(scope="module")
def shared_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real redis-server and S3 server: the cluster's index and store, without Celery (no compile messages)."""
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(tmp_path_factory.mktemp("redis")))
        yield redis_url, stack.enter_context(s3_server())


def _cluster_builder(backends: tuple[str, str], cache_dir: Path) -> ArtifactBuilder:
    redis_url, s3 = backends
    return ArtifactBuilder(FarmConfig(cache_dir=cache_dir, opt_level=0, redis_url=redis_url, s3_endpoint=s3,
                                      s3_bucket="farm-versions", s3_access_key="testing",
                                      s3_secret_key="testing-secret"))


@pytest.mark.parametrize("change", ["missing", "newer"])
def test_shared_metadata_of_another_format_is_a_miss_then_rebuilt(change: str, shared_backends: tuple[str, str],
                                                                  tmp_path: Path) -> None:
    """The metadata in Redis and in S3 as another farm wrote it: a node with an empty cache reads neither, and
    its builder rebuilds and stores the artifact in this format."""
    built = _cluster_builder(shared_backends, tmp_path / "builder").ensure_ruleset(RULES, f"p-{change}", "x86-64")
    key = built.meta.key
    node = _cluster_builder(shared_backends, tmp_path / "node")
    index, store = node.index, node.store
    assert isinstance(index, RedisIndex) and isinstance(store, S3Store)
    other = _reformatted(built.meta.to_json(), change)
    index.r.hset(keys.artifact(key), "meta", other)
    _, meta_name = store.object_names(key)
    store.client.put_object(store.bucket, meta_name, io.BytesIO(other.encode()), len(other.encode()))
    assert index.meta(key) is None and store.remote_meta(key) is None and store.fetch(key) is None
    again = node.ensure_ruleset(RULES, f"p-{change}", "x86-64")
    assert not again.cached and again.meta.key == key
    assert index.meta(key) == again.meta and store.remote_meta(key) == again.meta
    _rewrites(again)
