"""Issue 10, section 4: ordinary bad input to configuration, the CLI and the index ends in one clear line and a
documented exit code (2 bad input or usage, 130 interrupted), never a traceback, a crash or a silent surprise.

Each test also fails on the code before these fixes (tracebacks, ValueErrors, created directories, a hang)."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from farm.cache.index.sqlite import SQLiteIndex
from farm.cache.store import ArtifactMeta
from farm.cli import main
from farm.config import FarmConfig
from farm.errors import ConfigError, FarmError
from farm.lang.terms import TermGraph
from farm.semantics.interp import Interpreter
from farm.semantics.oracle import Oracle

from .conftest import EXAMPLES, ROOT, ruleset_of


def farm_process(*args: str, cache: Path, env: dict[str, str] | None = None,
                 prelude: str = "") -> subprocess.Popen[str]:
    """`farm ARGS` in a fresh interpreter; `prelude` runs first (e.g. to make some imports fail)."""
    code = f"{prelude}\nimport sys\nfrom farm.cli import main\nsys.exit(main(sys.argv[1:]))"
    full_env = {**os.environ, "FARM_CACHE_DIR": str(cache), "COLUMNS": "200", "PYTHONPATH": str(ROOT),
                **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def farm(*args: str, cache: Path, timeout: float = 60, **kwargs: object) -> tuple[int, str, str]:
    proc = farm_process(*args, cache=cache, **kwargs)  # type: ignore[arg-type]
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, stdout, stderr


def assert_clean_failure(code: int, stderr: str, expected: int, *fragments: str) -> None:
    assert code == expected, stderr
    assert "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


# --- 4. a corrupt index.sqlite is a cache to rebuild ---------------------------------------------------------

def _meta(i: int) -> ArtifactMeta:
    return ArtifactMeta(key=f"{i:064x}", sha256="0" * 64, size=i, target="x86-64", triple="x86_64-pc-linux-gnu",
                        cpu="x86-64", opt_level=2, ruleset="r" * 300)


@pytest.fixture(scope="module")
def good_index(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real index of 200 entries (many pages), closed cleanly (no WAL left)."""
    path = tmp_path_factory.mktemp("good") / "index.sqlite"
    index = SQLiteIndex(path)
    for i in range(200):
        index.note_build(f"pattern{i}", "x86-64", _meta(i))
    index._db.close()
    return path.read_bytes()


WRONG_SCHEMAS = {
    "missing column": "CREATE TABLE patterns (pattern_id TEXT NOT NULL, target TEXT NOT NULL)",
    "extra column": "CREATE TABLE artifacts (key TEXT PRIMARY KEY, meta TEXT NOT NULL, last_hit REAL, x INT)",
    "no primary key": "CREATE TABLE counters (name TEXT, value REAL NOT NULL)",
    "other key": "CREATE TABLE patterns (pattern_id TEXT PRIMARY KEY, target TEXT NOT NULL, key TEXT NOT NULL)",
    "other type": "CREATE TABLE counters (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "nullable": "CREATE TABLE artifacts (key TEXT PRIMARY KEY, meta TEXT, last_hit REAL)",
    "a view": "CREATE VIEW patterns AS SELECT 'p' AS pattern_id, 't' AS target, 'k' AS key",
}


def _corruptions(good: bytes, tmp: Path) -> list[tuple[str, bytes]]:
    rng = random.Random(10)
    # (a file shorter than SQLite's 100-byte header is an empty database to SQLite: nothing to move aside)
    cases = [(f"garbage {n} bytes", rng.randbytes(n)) for n in (100, 512, 4096, 70_000)]
    cases += [(f"sqlite header then garbage {n}", b"SQLite format 3\0" + rng.randbytes(n)) for n in (84, 4080, 9000)]
    cases += [(f"truncated to {f:.0%}", good[:int(len(good) * f)]) for f in (0.01, 0.05, 0.3, 0.6, 0.9)]
    # header fields (page size, format, page count, schema format), page 1's b-tree, data pages (bytes SQLite
    # never reads, e.g. a page's free space or some header fields, are no corruption to it: not among these)
    for at in (16, 18, 28, 44, 100, 4096, 8200):
        flipped = bytearray(good)
        flipped[at:at + 8] = rng.randbytes(8)
        cases.append((f"bytes {at}.. overwritten", bytes(flipped)))
    for name, sql in WRONG_SCHEMAS.items():
        path = tmp / f"{name}.sqlite"
        db = sqlite3.connect(path)
        db.execute(sql)
        db.commit()
        db.close()
        cases.append((f"valid SQLite, wrong schema: {name}", path.read_bytes()))
    return cases


def _moved_aside(folder: Path) -> list[Path]:
    """The database files moved aside (their -wal/-shm companions go with them)."""
    return [p for p in folder.glob("index.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm", "-journal"))]


def _use(index: SQLiteIndex, case: str) -> None:
    index.note_build("fresh", "x86-64", _meta(1))
    index.note_hit("fresh", "x86-64", _meta(1))
    assert index.lookup("fresh", "x86-64") == _meta(1).key and index.artifact_count() == 1, case
    assert index.counters()["hits"] == 1 and index.lookup("pattern0", "x86-64") is None, case


def test_corrupt_index_is_moved_aside_and_rebuilt(good_index: bytes, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cases = _corruptions(good_index, tmp_path)
    for number, (name, data) in enumerate(cases):
        folder = tmp_path / f"case{number}"
        folder.mkdir()
        (folder / "index.sqlite").write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            index = SQLiteIndex(folder / "index.sqlite")
            _use(index, name)
        aside = _moved_aside(folder)
        assert [p.read_bytes() for p in aside] == [data], f"{name}: not moved aside as it was: {os.listdir(folder)}"
        warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
        assert len(warnings) == 1 and str(folder / "index.sqlite") in warnings[0].getMessage(), name
    assert len(cases) >= 25


def test_corruption_found_by_a_later_query_is_recovered_once(good_index: bytes, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Page 1 (the schema) intact, the data pages garbage: found only when a query reads them; two open
    indexes (as two processes would) move the file aside once and both end on the same new index."""
    path = tmp_path / "index.sqlite"
    path.write_bytes(good_index)
    first, second = SQLiteIndex(path), SQLiteIndex(path)
    damaged = bytearray(good_index)
    damaged[4096:] = random.Random(4).randbytes(len(good_index) - 4096)
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
        assert first.lookup("pattern0", "x86-64") is None
        first.note_build("fresh", "x86-64", _meta(1))
        assert second.lookup("fresh", "x86-64") == _meta(1).key
    assert len(_moved_aside(tmp_path)) == 1
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1


def test_cli_keeps_going_on_a_corrupt_index(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "index.sqlite").write_bytes(b"not a database at all" * 300)
    code, stdout, stderr = farm("stats", cache=tmp_path)
    assert code == 0 and "Traceback" not in stderr and "hit rate" in stdout, stderr
    assert "unreadable" in stderr and len(_moved_aside(tmp_path)) == 1


# --- 5. every configuration value is checked ------------------------------------------------------------------

BAD_VALUES: dict[str, list[str]] = {
    "FARM_CACHE_DIR": ["{file}", "{file}/sub"],
    "FARM_WORK_DIR": ["{file}"],
    "FARM_TARGET": ["x86-65", "NATIVE", "aarch64x"],
    "FARM_OPT_LEVEL": ["9", "high", "-1", "4", "2.0", "O2"],
    "FARM_STAGE_TIMEOUT": ["0", "-5", "nan", "inf", "soon", "1e999"],
    "FARM_STAGE_MEMORY_MB": ["0", "-1", "4G", "1.5"],
    "FARM_WORKERS": ["-1", "many", "2.5"],
    "FARM_MAX_MEMORY": ["lots", "-1", "4X", "1.5G", "G"],
    "FARM_CACHE_SIZE": ["big", "-1", "2gigs", "G"],
    "FARM_COMPILE_PATH": ["fast", "Staged", "in-process"],
    "FARM_TIERED": ["2", "maybe", "tiered"],
    "FARM_REDIS_URL": ["localhost:6379", "http://redis:6379", "redis://h:99999/0", "redis"],
    "FARM_BROKER_URL": ["localhost:6379", "redis://h:port/0", "amqp"],
    "FARM_RESULT_URL": ["localhost:6379", "amqp://guest@rabbit//", "redis://h:99999/1"],
    "FARM_S3_ENDPOINT": ["http://minio:9000", "minio:9000/bucket", "minio:notaport", ":9000", "user@minio:9000"],
    "FARM_S3_BUCKET": ["Farm", "ab", "farm_artifacts", "-farm", "farm artifacts", "x" * 64],
    "FARM_S3_SECURE": ["ture", "2", "yes please"],
    "FARM_S3_REGION": ["us east", "us/east"],
    "FARM_SHARED_MODE": ["readonly", "ro", "READ-ONLY", "write"],
    "FARM_TASK_TIME_LIMIT": ["0", "-1", "nan", "ten"],
    "FARM_MAX_DELIVERIES": ["0", "-3", "three"],
    "FARM_OUTAGE_GRACE": ["-1", "inf", "nan", "long"],
    "FARM_VISIBILITY_TIMEOUT": ["0", "-60", "nan", "hour"],
}
FREE_TEXT = {"FARM_S3_ACCESS_KEY", "FARM_S3_SECRET_KEY", "FARM_SIGNING_KEY",  # any non-empty text is a value
             "FARM_VERIFY_KEY"}  # (key files are checked when keys are loaded: tests/test_signing.py)
GOOD_VALUES = {"FARM_CACHE_DIR": "{dir}", "FARM_WORK_DIR": "{dir}/work", "FARM_TARGET": "aarch64",
               "FARM_OPT_LEVEL": "0", "FARM_STAGE_TIMEOUT": "2.5", "FARM_STAGE_MEMORY_MB": "512",
               "FARM_WORKERS": "0", "FARM_MAX_MEMORY": "512M", "FARM_CACHE_SIZE": "2G",
               "FARM_COMPILE_PATH": "inprocess", "FARM_TIERED": "off",
               "FARM_REDIS_URL": "redis://:pw@redis:6379/0",
               "FARM_BROKER_URL": "amqp://guest@rabbit//", "FARM_RESULT_URL": "redis://:pw@redis:6379/1",
               "FARM_S3_ENDPOINT": "minio:9000",
               "FARM_S3_BUCKET": "farm.artifacts-2", "FARM_S3_SECURE": "TRUE", "FARM_S3_REGION": "eu-west-3",
               "FARM_SHARED_MODE": "read-only",
               "FARM_TASK_TIME_LIMIT": "30", "FARM_MAX_DELIVERIES": "1", "FARM_OUTAGE_GRACE": "0",
               "FARM_VISIBILITY_TIMEOUT": "3600", "FARM_S3_ACCESS_KEY": "a", "FARM_S3_SECRET_KEY": "s",
               "FARM_SIGNING_KEY": "k", "FARM_VERIFY_KEY": "old.pub, new.pub"}
BAD_SETTINGS = [(name, value) for name, values in BAD_VALUES.items() for value in values]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS, ids=[f"{n}={v}" for n, v in BAD_SETTINGS])
def test_every_bad_setting_is_a_config_error_naming_it(name: str, value: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    value = value.format(file=tmp_path / "a-file")
    with pytest.raises(ConfigError) as from_env:
        FarmConfig.from_env({name: value})
    message = str(from_env.value)
    assert name in message and repr(value) in message and "in the environment: expected " in message
    config_file = tmp_path / "farm.toml"
    config_file.write_text(f"# settings\nopt_level = 1\n{name} = {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match=f"{name}=.* at {config_file}:3: expected "):
        FarmConfig.from_env({"FARM_CONFIG": str(config_file)})


def test_the_table_covers_every_setting_and_good_values_pass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A variable added to from_env without bad values here fails this test (lead: extend BAD_VALUES)."""
    from farm.config import SettingsReader

    read: list[str] = []
    original = SettingsReader.__call__

    def recording(self: SettingsReader, name: str, default: object, parse: object) -> object:
        read.append(name)
        return original(self, name, default, parse)  # type: ignore[arg-type]

    monkeypatch.setattr(SettingsReader, "__call__", recording)
    config = FarmConfig.from_env({k: v.format(dir=tmp_path) for k, v in GOOD_VALUES.items()})
    assert set(read) == set(BAD_VALUES) | FREE_TEXT == set(GOOD_VALUES)
    assert (config.opt_level, config.compile_path, config.s3_secure, config.target) == (0, "inprocess", True, "aarch64")


def test_secrets_are_not_echoed_and_config_file_must_be_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad_url:
        FarmConfig.from_env({"FARM_REDIS_URL": "redis://:hunter2@redis:99999/0"})
    assert "hunter2" not in str(bad_url.value) and "***" in str(bad_url.value)
    binary = tmp_path / "farm.conf"
    binary.write_bytes(b"FARM_OPT_LEVEL=\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        FarmConfig.from_env({"FARM_CONFIG": str(binary)})


@pytest.mark.parametrize("setting", ["FARM_OPT_LEVEL=9", "FARM_COMPILE_PATH=fast", "FARM_OPT_LEVEL=high"])
def test_cli_exits_2_on_a_bad_setting(setting: str, tmp_path: Path) -> None:
    name, _, value = setting.partition("=")
    code, _, stderr = farm("stats", cache=tmp_path, env={name: value})
    assert_clean_failure(code, stderr, 2, name, repr(value), "expected")


# --- 6. fuel is at least 1 ------------------------------------------------------------------------------------

BAD_FUEL = [0, -5, -1, 1 << 63, True, 2.5]


@pytest.mark.parametrize("fuel", BAD_FUEL)
def test_api_refuses_fuel_below_one(fuel: int, tmp_path: Path) -> None:
    from farm.cache.engine import Engine

    ruleset = ruleset_of("rule r: (f ?x) => ?x\n")
    graph = TermGraph(ruleset.make_signature())
    roots = graph.parse("(f a)")
    with pytest.raises(FarmError, match="fuel"):
        Interpreter(ruleset).rewrite(graph, roots, fuel)
    with pytest.raises(FarmError, match="fuel"):
        Oracle(ruleset, fuel)
    with pytest.raises(FarmError, match="fuel"):  # before any compile
        Engine(FarmConfig(cache_dir=tmp_path)).rewrite(ruleset, graph, roots, "p", fuel, "native")


@pytest.mark.parametrize(("command", "fuel"), [("rewrite", "0"), ("rewrite", "-5"), ("verify", "0"),
                                               ("rewrite", str(1 << 63))])
def test_cli_refuses_fuel_below_one(command: str, fuel: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    terms = tmp_path / "t.terms"
    terms.write_text("(not true)")
    args = [str(EXAMPLES / "bool.farm"), *([str(terms)] if command == "rewrite" else [])]
    with pytest.raises(SystemExit) as usage:
        main([command, *args, "--fuel", fuel, "--engine", "interpreter"])
    assert usage.value.code == 2 and "--fuel" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["top", "--interval", "-1", "--iterations", "1"],
                                  ["top", "--interval", "0", "--iterations", "1"],
                                  ["top", "--iterations", "-1"], ["exporter", "--port", "70000"],
                                  ["hot", "--top", "0"], ["worker", "--targets", "x86-64", "--concurrency", "0"],
                                  ["worker", "--targets", "x86-64", "--metrics-port", "-1"],
                                  ["prewarm", "hot.farm", "--targets", "x86-64", "--timeout", "-1"]])
def test_cli_numeric_options_are_checked(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == 2 and "expected" in capsys.readouterr().err


# --- 7. a user-named output goes where asked, or nowhere --------------------------------------------------------

@pytest.mark.parametrize("where", ["missing/x.ll", "missing/deeper/x.ll", "a-file/x.ll", "a-dir"])
def test_codegen_output_directory_must_exist(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-dir").mkdir()
    before = sorted(tmp_path.rglob("*"))
    code = main(["codegen", str(EXAMPLES / "bool.farm"), "-o", str(tmp_path / where)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write {tmp_path / where}" in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing created
    assert main(["codegen", str(EXAMPLES / "bool.farm"), "-o", str(tmp_path / "a-dir" / "x.ll")]) == 0


@pytest.mark.parametrize(("device", "code"), [("/dev/null", 0), ("/dev/full", 2)])
def test_codegen_writes_into_a_device_it_is_given_never_replaces_it(device: str, code: int, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`-o /dev/stdout` (a symlink to /proc/self/fd/1), a FIFO, a device: written to, never renamed over. The
    atomic replace once put a regular file in its place (as root, /dev/stdout or /dev/full itself) and
    reported success, also where every write fails (/dev/full). A symlink here stands for /dev/stdout."""
    sink = tmp_path / "sink"
    sink.symlink_to(device)
    assert main(["codegen", str(EXAMPLES / "bool.farm"), "-o", str(sink)]) == code
    assert sink.is_symlink() and os.readlink(sink) == device
    if code:
        assert f"cannot write {sink}: No space left on device" in capsys.readouterr().err


# --- 8. a missing cluster extra says what to install -------------------------------------------------------------

CLUSTER_ENV = {"FARM_REDIS_URL": "redis://127.0.0.1:9/0", "FARM_S3_ENDPOINT": "127.0.0.1:9"}
WITHOUT_EXTRAS = "import sys\nsys.modules.update(dict.fromkeys(['celery', 'redis', 'minio', 'prometheus_client']))"


@pytest.mark.parametrize("argv", [["worker", "--targets", "x86-64"], ["prewarm", "HOT", "--targets", "x86-64"],
                                  ["hot"], ["exporter", "--port", "0"], ["pull", "p"], ["stats"], ["top"]])
def test_missing_cluster_extra_is_named(argv: list[str], tmp_path: Path) -> None:
    hot = tmp_path / "hot.farm"
    hot.write_text("rule p: (f ?x) => ?x\n")
    argv = [str(hot) if a == "HOT" else a for a in argv]
    code, _, stderr = farm(*argv, cache=tmp_path, env=CLUSTER_ENV, prelude=WITHOUT_EXTRAS, timeout=30)
    assert_clean_failure(code, stderr, 2, "pip install 'farm-rewrite[cluster]'")


def test_extra_table_matches_pyproject() -> None:
    from farm.extras import EXTRA_OF_MODULE

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["cluster"]:
        name = requirement.split("[")[0].split(">")[0].split("=")[0].strip().replace("-", "_")
        assert EXTRA_OF_MODULE.get(name) == "cluster", name


# --- 9. Ctrl-C exits 130, quietly ---------------------------------------------------------------------------------

def _loop_files(tmp: Path) -> list[str]:
    rules, terms = tmp / "grow.farm", tmp / "grow.terms"
    rules.write_text("rule grow: (f ?x) => (f (g ?x))\n")
    terms.write_text("(f a)")
    return [str(rules), str(terms)]


LONG_COMMANDS = {"top": lambda tmp: ["top", "--interval", "0.2"],
                 "rewrite": lambda tmp: ["rewrite", *_loop_files(tmp), "--engine", "interpreter",
                                         "--fuel", str(10**15)],
                 "exporter": lambda tmp: ["exporter", "--port", "0", "--host", "127.0.0.1"]}


@pytest.mark.parametrize("delay", [0.0, 0.7])
@pytest.mark.parametrize("command", sorted(LONG_COMMANDS))
def test_ctrl_c_exits_130_without_a_traceback(command: str, delay: float, tmp_path: Path) -> None:
    proc = farm_process(*LONG_COMMANDS[command](tmp_path), cache=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "index.sqlite").exists():  # opened once the command runs (past imports)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        time.sleep(0.2 + delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert_clean_failure(proc.returncode, stderr, 130, "interrupted")
    assert len(stderr.strip().splitlines()) <= 2, stderr  # the exporter's "serving" line, then one line


def test_exporter_stops_on_sigterm_with_exit_0(tmp_path: Path) -> None:
    proc = farm_process("exporter", "--port", "0", "--host", "127.0.0.1", cache=tmp_path)
    try:
        assert proc.stderr is not None and "serving http://127.0.0.1:" in proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0


# --- an index entry that names no content key is an error, not a traceback ---------------------------------------

@pytest.mark.parametrize("key", ["../../../etc/passwd", "A" * 64, "ab" * 31, "ab" * 32 + "\n", " "])
def test_pull_of_an_index_entry_that_is_not_a_content_key_is_a_one_line_error(
        key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The index is a cache others may write (Redis in a cluster) or that may be corrupt: a key that is not sha256
    hex never reaches a path (check_key), and `farm pull` says so instead of ending in a ValueError traceback."""
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path))
    SQLiteIndex(tmp_path / "index.sqlite").record("p", "x86-64", ArtifactMeta(
        key=key, sha256="0" * 64, size=1, target="x86-64", triple="x86_64-pc-linux-gnu", cpu="x86-64", opt_level=0))
    assert main(["pull", "p", "--target", "x86-64"]) == 2
    err = capsys.readouterr().err
    assert "not a content key" in err and "Traceback" not in err


# --- stored metadata of the wrong shape is a corrupt artifact: rebuilt, never a TypeError ------------------------

@pytest.mark.parametrize(("field", "value"), [("target", [1]), ("target", {"a": 1}), ("size", "x"),
                                              ("opt_level", None), ("toolchain", []), ("pattern_ids", "p"),
                                              ("stage_seconds", 5), ("created_at", "now"), ("size", True)])
def test_metadata_with_a_field_of_the_wrong_type_is_rebuilt(field: str, value: object, tmp_path: Path) -> None:
    from farm.cache.engine import Engine, load_native
    from farm.errors import IntegrityError

    from .conftest import ruleset_of

    rules = ruleset_of("rule r: (f ?x) => ?x")
    engine = Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=0))
    art = engine.compile(rules, "p", "x86-64")
    meta_file = art.path.with_suffix(".json")
    data = json.loads(meta_file.read_text())
    data[field] = value
    meta_file.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match=f"field {field!r}"):
        ArtifactMeta.from_json(meta_file.read_text(), art.meta.key)
    again = engine.compile(rules, "p", "x86-64")  # refused as corrupt, deleted, rebuilt
    assert not again.cached
    load_native(rules, again)


def test_a_redis_password_is_never_printed() -> None:
    """Titles and messages carry Redis URLs (farm stats, an outage): the password is masked in each."""
    from farm.cache.index.redis import RedisIndex
    from farm.config import masked
    from farm.errors import BackendUnavailable

    assert masked("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    index = RedisIndex("redis://:s3cret@127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(BackendUnavailable) as info:
        index.counters()
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
