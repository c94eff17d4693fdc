"""Native code against the interpreter, through the real staged LLVM toolchain."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.cache.builder import ArtifactBuilder
from farm.cache.engine import Engine, FallbackWarning, load_native
from farm.compiler.elf_policy import EM_AARCH64, EM_X86_64
from farm.compiler.tools import find_tool
from farm.config import FarmConfig
from farm.errors import (
    FarmError,
    IncompatibleArtifact,
    IntegrityError,
    InvalidPatternId,
    StageFailed,
    ToolNotFound,
    WorkDirError,
)
from farm.lang.dsl import load_rules
from farm.lang.terms import TermGraph
from farm.lang.transduce import transduce_patterns
from farm.runtime.loader import NativeRuleset
from farm.semantics.interp import Interpreter
from farm.targets import REGISTRY, host_can_run

from .conftest import EXAMPLES, ruleset_of

PEANO = "rule plus0: (plus 0 ?y) => ?y\nrule plusS: (plus (s ?x) ?y) => (s (plus ?x ?y))"


def elf_header(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:20]
    assert data[:4] == b"\x7fELF"
    return struct.unpack_from("<HH", data, 16)  # e_type, e_machine


def example(name: str):  # type: ignore[no-untyped-def]
    parsed = load_rules(EXAMPLES / f"{name}.farm")
    return transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


@pytest.mark.parametrize("name", ["arith", "bool"])
def test_examples_native_equals_interpreter(session_engine: Engine, name: str) -> None:
    rs = example(name)
    text = (EXAMPLES / f"{name}.terms").read_text()
    native = load_native(rs, session_engine.compile(rs, name))
    g1, g2 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
    a = native.rewrite(g1, g1.parse(text))
    b = Interpreter(rs).rewrite(g2, g2.parse(text))
    assert a.engine == "native" and a.texts() == b.texts() and a.firings == b.firings
    assert sum(a.firings) > 0


def test_arith_sample_answers(session_engine: Engine) -> None:
    rs = example("arith")
    g = TermGraph(rs.make_signature())
    roots = g.parse("(add (add (add x 1) 2) 3) (max 3 9) (mul 9223372036854775807 2) (div (mul y 7) 7)")
    result = session_engine.rewrite(rs, g, roots, "arith", engine="native")
    assert result.texts() == ["(add x 6)", "9", "-2", "y"]


def test_aarch64_build_is_an_aarch64_shared_object(session_engine: Engine) -> None:
    rs = example("arith")
    for target in ("aarch64", "aarch64-neoverse-n1"):
        art = session_engine.compile(rs, "arith", target)
        assert elf_header(art.path) == (3, 183)  # ET_DYN, EM_AARCH64
        assert art.meta.cpu == REGISTRY[target].cpu


def test_x86_64_v3_build_loads_and_rewrites(session_engine: Engine) -> None:
    rs = example("arith")
    art = session_engine.compile(rs, "arith", "x86-64-v3")
    assert elf_header(art.path) == (3, 62)
    if not host_can_run(REGISTRY["x86-64-v3"]):
        with pytest.raises(IncompatibleArtifact):
            load_native(rs, art)
        pytest.skip("this host cannot run x86-64-v3 code; refusal checked")
    g = TermGraph(rs.make_signature())
    result = load_native(rs, art).rewrite(g, g.parse("(mul 3 (add 4 5))"))
    assert result.texts() == ["27"]


def test_million_level_peano_term_crosses_the_boundary(session_engine: Engine) -> None:
    rs = ruleset_of(PEANO)
    native = load_native(rs, session_engine.compile(rs, "peano"))
    depth = 1_000_000
    g = TermGraph(rs.make_signature())
    (root,) = g.parse("(plus " + "(s " * depth + "0" + ")" * depth + " (s 0))")
    start = time.perf_counter()
    result = native.rewrite(g, [root], fuel=2 * depth)
    assert result.firings == [1, depth]
    assert result.graph is not g and result.graph.depth(result.outcomes[0]) == depth + 2
    assert time.perf_counter() - start < 60


def test_cycles_and_fuel_give_the_same_errors(session_engine: Engine) -> None:
    rs = ruleset_of("rule swap [bidirectional]: (f a) => (f b)\nrule grow: (g ?x) => (g (s ?x))")
    native = load_native(rs, session_engine.compile(rs, "errors"))
    text = "(f a) (g 0) (h (f b))"
    g1, g2 = TermGraph(rs.make_signature()), TermGraph(rs.make_signature())
    a, b = native.rewrite(g1, g1.parse(text), fuel=300), Interpreter(rs).rewrite(g2, g2.parse(text), fuel=300)
    assert [(type(x), str(x)) for x in a.outcomes] == [(type(x), str(x)) for x in b.outcomes]
    assert a.firings == b.firings and a.steps == b.steps


def test_changed_rule_gets_a_new_key_and_never_a_stale_library(engine: Engine) -> None:
    first = engine.compile(ruleset_of("rule r: (f ?x) => (g ?x)"), "same-id")
    second = engine.compile(ruleset_of("rule r: (f ?x) => (h ?x)"), "same-id")
    assert first.meta.key != second.meta.key and not second.cached
    assert engine.builder.index.lookup("same-id", engine.config.target) == second.meta.key


def test_second_process_hits_the_sqlite_cache(engine: Engine, cache_dir: Path) -> None:
    art = engine.compile(example("bool"), "bool")
    code = ("import json; from farm.cache.engine import Engine; from tests.test_native import example;"
            "a = Engine().compile(example('bool'), 'bool'); print(json.dumps([a.cached, a.meta.key, a.seconds]))")
    env = {**os.environ, "FARM_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, env=env)
    cached, key, seconds = json.loads(out.stdout)
    assert cached and key == art.meta.key


def test_tampered_artifact_is_refused_and_rebuilt(engine: Engine) -> None:
    rs = ruleset_of(PEANO)
    art = engine.compile(rs, "peano")
    data = bytearray(art.path.read_bytes())
    data[-1] ^= 0xFF
    art.path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="refusing to load"):
        NativeRuleset(art.path, rs, art.meta.sha256)
    again = engine.compile(rs, "peano")  # a corrupt object is a miss, rebuilt, never served
    assert not again.cached and again.meta.sha256 == art.meta.sha256


HOSTILE_IDS = ["../../x", "a/b/../../../etc/passwd", "quote\"'`", "with space", "new\nline", "ünïcødé ☃",
               "$(rm -rf /)", "x" * 4000]


@pytest.mark.parametrize("pattern_id", HOSTILE_IDS)
def test_hostile_pattern_ids_never_reach_paths(engine: Engine, cache_dir: Path, pattern_id: str) -> None:
    art = engine.compile(ruleset_of(PEANO), pattern_id)
    assert art.path.resolve().is_relative_to(cache_dir.resolve())
    assert art.path.name == f"{art.meta.key}.so"
    assert engine.builder.index.lookup(pattern_id, engine.config.target) == art.meta.key
    files = [p.name for p in cache_dir.rglob("*")]
    assert not any(pattern_id in name for name in files)


@pytest.mark.parametrize("pattern_id", ["", "nul\0byte", "x" * 5000])
def test_invalid_pattern_ids_are_typed_errors(engine: Engine, pattern_id: str) -> None:
    with pytest.raises(InvalidPatternId):
        engine.compile(ruleset_of(PEANO), pattern_id)


def test_invalid_ir_carries_the_tool_stderr_and_leaves_nothing(engine: Engine, cache_dir: Path) -> None:
    with pytest.raises(StageFailed) as info:
        engine.builder.ensure_ir("define i64 @f(i64 %x) {\n  ret i32 %x\n}\n", "bad-ir")
    assert info.value.stage == "llvm-as" and "error:" in info.value.stderr and "llvm-as" in str(info.value)
    assert engine.builder.index.lookup("bad-ir", engine.config.target) is None
    assert not list(cache_dir.glob("objects/*/*"))
    assert not list(engine.config.build_dir.iterdir())  # no half-built files either
    assert engine.builder.index.counters()["compilations_failed"] == 1


def test_missing_tool_names_the_tool_and_package_and_falls_back(engine: Engine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_LLC", "/nonexistent/llc")
    find_tool.cache_clear()
    try:
        rs = ruleset_of(PEANO + "\nrule other: (q ?x) => ?x")
        with pytest.raises(ToolNotFound, match="apt-get install llvm-16"):
            engine.compile(rs, "peano2", "x86-64")
        g = TermGraph(rs.make_signature())
        with pytest.warns(FallbackWarning, match="llc"):
            result = engine.rewrite(rs, g, g.parse("(plus (s 0) (s 0))"), "peano2", target="x86-64")
        assert result.engine == "interpreter" and result.texts() == ["(s (s 0))"]
    finally:
        find_tool.cache_clear()


@pytest.mark.parametrize(("tool", "variable", "package"), [("llc", "FARM_LLC", "llvm-16"),
                                                          ("llvm-as", "FARM_LLVM_AS", "llvm-16"),
                                                          ("ld.lld", "FARM_LD_LLD", "lld-16")])
def test_a_missing_tool_message_names_its_override_variable_once(tool: str, variable: str, package: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "/nonexistent/tool")
    find_tool.cache_clear()
    try:
        with pytest.raises(ToolNotFound) as overridden:
            find_tool(tool)
        monkeypatch.delenv(variable)
        monkeypatch.setattr("farm.compiler.tools.shutil.which", lambda name: None)  # installed nowhere
        find_tool.cache_clear()
        with pytest.raises(ToolNotFound) as absent:
            find_tool(tool)
    finally:
        find_tool.cache_clear()
    assert str(overridden.value) == (f"LLVM tool {tool!r} was not found: {variable}=/nonexistent/tool is not an "
                                     f"executable; point {variable} at the tool, or unset it and install the tool "
                                     f"with `apt-get install {package}`")
    assert str(absent.value) == (f"LLVM tool {tool!r} was not found on PATH; install it with `apt-get install "
                                 f"{package}` or point {variable} at it")
    assert (absent.value.tool, absent.value.variable, absent.value.package) == (tool, variable, package)


def test_unwritable_work_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    builder = ArtifactBuilder(FarmConfig(cache_dir=tmp_path / "c", work_dir=blocker / "work"))
    with pytest.raises(WorkDirError, match="cannot write the work directory"):
        builder.ensure_ruleset(ruleset_of(PEANO), "p", "x86-64")


def test_unknown_target_is_typed(engine: Engine) -> None:
    with pytest.raises(FarmError, match="unknown target 'sparc'"):
        engine.compile(ruleset_of(PEANO), "p", "sparc")


def test_every_registered_target_builds(session_engine: Engine) -> None:
    rs = ruleset_of(PEANO)
    jobs_targets = list(REGISTRY)
    from farm.cache.engine import CompileJob

    results = dict((job.target, art) for job, art in session_engine.compile_many(
        [CompileJob(rs, "peano-all", t, 1) for t in jobs_targets]))
    for target, art in results.items():
        assert not isinstance(art, FarmError), art
        assert elf_header(art.path)[1] == {"x86_64": EM_X86_64, "aarch64": EM_AARCH64}[REGISTRY[target].arch]


@pytest.mark.parametrize("name", ["arith", "bool"])
def test_llvmlite_accepts_the_same_ir(name: str) -> None:
    import llvmlite.binding as llvm

    from farm.compiler.codegen.llvm import generate_llvm_ir

    text = generate_llvm_ir(example(name), "x86_64-unknown-linux-gnu")
    assert "*" not in text  # opaque pointers only: no `T*` anywhere
    module = llvm.parse_assembly(text)
    module.verify()
    exported = {f.name for f in module.functions if not f.is_declaration and f.linkage == llvm.Linkage.external}
    assert {"farm_rewrite", "farm_mark", "farm_export", "farm_arena_new", "farm_call", "farm_fingerprint"} <= exported


def test_generated_thousand_rule_ruleset_verifies_natively(session_engine: Engine, tmp_path: Path) -> None:
    from farm.runtime.verify import differential

    sys.path.insert(0, str(EXAMPLES))
    try:
        import gen_rules
    finally:
        sys.path.remove(str(EXAMPLES))
    text, _ = gen_rules.generate(1000)
    (tmp_path / "gen.farm").write_text(text)
    parsed = load_rules(tmp_path / "gen.farm")
    rs = transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)
    assert len(rs.rules) == 1000
    native = load_native(rs, session_engine.compile(rs, "gen1000"))
    report = differential(rs, native, cases=400, seed=3, fuel=10_000)
    assert report.ok, report.mismatches[:5]
    assert report.firings > 100


def test_config_file_under_the_environment(tmp_path: Path) -> None:
    from farm.errors import ConfigError

    good = tmp_path / "farm.toml"
    good.write_text('# cluster\nFARM_REDIS_URL = "redis://cache:6379/0"\nopt_level = 3\n'
                    'cache_dir = "/srv/farm cache"  # an inline comment is a comment, not part of the path\n'
                    'verify_key = ["old.pub", "new.pub"]\ns3_secure = true\n')
    config = FarmConfig.from_env({"FARM_CONFIG": str(good), "FARM_OPT_LEVEL": "1"})
    assert config.redis_url == "redis://cache:6379/0" and config.broker_url == config.redis_url
    assert config.opt_level == 1  # the environment wins over the file
    assert config.cache_dir == Path("/srv/farm cache") and config.s3_secure
    assert config.verify_keys == (Path("old.pub"), Path("new.pub"))
    bad = tmp_path / "bad.toml"
    bad.write_text('target = "x86-64"\nredis = oops\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2: .*expected TOML"):
        FarmConfig.from_env({"FARM_CONFIG": str(bad)})
    typo = tmp_path / "typo.toml"
    typo.write_text('target = "x86-64"\n\nopt_levl = 1\n')
    with pytest.raises(ConfigError, match=r"typo.toml:3: unknown setting FARM_OPT_LEVL"):
        FarmConfig.from_env({"FARM_CONFIG": str(typo)})
    nested = tmp_path / "nested.toml"
    nested.write_text('[cluster]\nredis_url = "redis://h:6379/0"\n')
    with pytest.raises(ConfigError, match=r"nested.toml:1: cluster is a dict"):
        FarmConfig.from_env({"FARM_CONFIG": str(nested)})


def test_the_config_file_has_a_default_place(tmp_path: Path) -> None:
    """$XDG_CONFIG_HOME/farm/config.toml (else ~/.config/farm/config.toml) when it exists; FARM_CONFIG names
    another, or none when empty."""
    home = tmp_path / "xdg" / "farm"
    home.mkdir(parents=True)
    (home / "config.toml").write_text("opt_level = 0\n")
    assert FarmConfig.from_env({"XDG_CONFIG_HOME": str(tmp_path / "xdg")}).opt_level == 0
    assert FarmConfig.from_env({"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "FARM_CONFIG": ""}).opt_level == 2
    (tmp_path / ".config").symlink_to(tmp_path / "xdg")
    config, settings, file = FarmConfig.explained({"HOME": str(tmp_path)})
    assert config.opt_level == 0 and file == tmp_path / ".config" / "farm" / "config.toml"
    origins = {s.name: s.origin for s in settings}
    assert origins["FARM_OPT_LEVEL"] == f"{file}:1" and origins["FARM_TARGET"] == "default"
    assert FarmConfig.from_env({}).opt_level == 2  # nothing to say where home is: no file
