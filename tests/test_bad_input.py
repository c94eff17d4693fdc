"""Ordinary bad input never crashes farm nor prints a traceback (issue 10, sections 4 and 5).

Empty term files, bytes that are not UTF-8, patterns and terms thousands deep, conflicting operator
declarations, and inputs that are not regular files or are too large: each is a clear error (exit 2 from the
CLI) or, for empty input, an empty result, on every engine. CLI runs are subprocesses, so a segfault fails
the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.cache.engine import Engine
from farm.config import FarmConfig, read_config_file
from farm.errors import (
    ConditionsTooDeep,
    ConfigError,
    InputTooLarge,
    InputUnreadable,
    NotARegularFile,
    NotUtf8Text,
    ParseError,
)
from farm.inputs import CONFIG, RULES, TERMS, InputKind, read_input_text
from farm.lang.dsl import load_rules, parse_rules
from farm.lang.rules import App, BinOp, Computed, Lit, LitExpr, Neg, PatternExpr, Var
from farm.lang.serialize import ruleset_from_json, ruleset_to_json
from farm.lang.terms import TermGraph
from farm.runtime.verify import differential
from farm.semantics import MAX_CONDITION_DEPTH
from farm.semantics.interp import Interpreter
from farm.semantics.oracle import Oracle, from_graph

from .conftest import EXAMPLES, ROOT, ruleset_of


def farm(*args: str, cache: Path, memory_cap: int | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess; `memory_cap` (bytes of address space) makes a regression that reads an endless
    input fail fast instead of taking the machine."""
    full_env = {**os.environ, "FARM_CACHE_DIR": str(cache), "COLUMNS": "200", "PYTHONPATH": str(ROOT), **env}

    def cap_memory() -> None:
        if memory_cap is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_cap, memory_cap))

    return subprocess.run([sys.executable, "-m", "farm.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=full_env, timeout=120, check=False, preexec_fn=cap_memory)


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, one message naming what is wrong, no traceback and no signal."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())  # rich wraps long lines
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def python_default_stack() -> Iterator[None]:
    """conftest raises the recursion limit for the whole run; these tests prove depth needs no raise."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


# ---- 1. no roots: an empty result on every engine -------------------------------------------------

EMPTY_TERM_FILES = ["", "\n", "   \t\n", "; only a comment\n", "# a comment\n; another\n\n"]


NO_ROOTS_SCRIPT = """
import json, sys
from farm.config import FarmConfig
from farm.lang.dsl import load_rules
from farm.cache.engine import Engine
from farm.lang.terms import TermGraph
from farm.lang.transduce import transduce_patterns

parsed = load_rules(sys.argv[1])
rs = transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)
engine = Engine(FarmConfig(cache_dir=sys.argv[2], opt_level=0))
seen = []
for text in json.loads(sys.argv[3]):
    graph = TermGraph(rs.make_signature())
    roots = graph.parse(text)
    results = [engine.rewrite(rs, graph, roots, "arith", engine=name) for name in ("native", "interpreter")]
    results.append(engine.load_in_memory(rs).rewrite(graph, roots))
    seen.append([[r.engine, r.outcomes, r.steps, r.firings == [0] * len(rs.rules)] for r in results])
print(json.dumps(seen))
"""


def test_no_roots_rewrite_to_an_empty_result_on_every_engine(tmp_path: Path) -> None:
    """Through the Python API on the native library, in-memory code and the interpreter; in a subprocess,
    as on main this was a SIGSEGV (result arrays sized max(1, 0), a phantom root marked)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", NO_ROOTS_SCRIPT, str(EXAMPLES / "arith.farm"), str(tmp_path),
                             json.dumps(EMPTY_TERM_FILES)], capture_output=True, text=True, env=env, timeout=300,
                            check=False)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    expected = [["native", [], [], True], ["interpreter", [], [], True], ["native", [], [], True]]
    assert json.loads(result.stdout) == [expected] * len(EMPTY_TERM_FILES)


@pytest.mark.parametrize("text", [EMPTY_TERM_FILES[0], EMPTY_TERM_FILES[3]])
@pytest.mark.parametrize("engine", ["native", "interpreter"])
def test_cli_rewrites_an_empty_term_file(tmp_path: Path, text: str, engine: str) -> None:
    terms = tmp_path / "empty.terms"
    terms.write_text(text)
    result = farm("rewrite", str(EXAMPLES / "bool.farm"), str(terms), "--engine", engine, cache=tmp_path)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout == "" and "0 term(s) rewritten" in result.stderr


# ---- 2. bytes that are not UTF-8 ----------------------------------------------------------------------

BAD_BYTES = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]


def _with_bad_bytes(good_lines: list[str], line: int, bad: bytes) -> tuple[bytes, int, int]:
    """The lines with `bad` inserted after the first character of line `line` (1-based); its byte offset."""
    head = "".join(good_lines[:line - 1]).encode()
    target = good_lines[line - 1].encode()
    data = head + target[:1] + bad + target[1:] + "".join(good_lines[line:]).encode()
    return data, len(head) + 1, 2


@pytest.mark.parametrize("bad", BAD_BYTES)
@pytest.mark.parametrize("line", [1, 3])
@pytest.mark.parametrize("kind", [RULES, TERMS, CONFIG], ids=lambda k: k.name)
def test_non_utf8_names_file_line_and_byte_offset(tmp_path: Path, bad: bytes, line: int, kind: InputKind) -> None:
    lines = {"rule file": ["rule a: (f ?x) => ?x\n", "# ok\n", "rule b: (g ?x) => ?x\n"],
             "term file": ["(f x)\n", "(g y)\n", "(h z)\n"],
             "config file": ["FARM_OPT_LEVEL=1\n", "# c\n", "FARM_TARGET=native\n"]}[kind.name]
    data, offset, column = _with_bad_bytes(lines, line, bad)
    path = tmp_path / "input"
    path.write_bytes(data)
    with pytest.raises(NotUtf8Text) as caught:
        read_input_text(path, kind)
    assert (caught.value.location.line, caught.value.location.column) == (line, column)
    assert f"byte offset {offset}" in str(caught.value) and str(path) in str(caught.value)
    assert isinstance(caught.value, ParseError)


@pytest.mark.parametrize("bad", BAD_BYTES[:3])
def test_cli_non_utf8_term_file_is_exit_2(tmp_path: Path, bad: bytes) -> None:
    terms = tmp_path / "bad.terms"
    terms.write_bytes(b"(and true false)\n(or " + bad + b" true)\n")
    result = farm("rewrite", str(EXAMPLES / "bool.farm"), str(terms), "--engine", "interpreter", cache=tmp_path)
    assert_clean_error(result, f"{terms}:2:5", "not UTF-8", "byte offset 21")


# ---- 3. depth: patterns and terms thousands deep, no recursion -----------------------------------------

def nest(inner: str, depth: int, op: str = "s") -> str:
    return f"({op} " * depth + inner + ")" * depth


def deep_rules(depth: int) -> str:
    """A deep source and target, a long computed literal (a left-deep BinOp chain), parentheses and unary
    minus nested in a computed literal, and a condition over deep terms."""
    long_sum = " + ".join(["?y"] * depth)
    parens = "(" * depth + "?y" + ")" * depth
    negations = "- " * depth + "?y"
    return (f"rule deep: (f {nest('?x', depth)}) => (g {nest('?x', depth)})\n"
            f"rule sum: (sum ?y) => {{{long_sum}}} if const(?y)\n"
            f"rule par: (par ?y) => {{{parens} * 2}} if const(?y)\n"
            f"rule neg: (neg ?y) => {{{negations}}} if const(?y)\n"
            f"rule cond: (c ?x) => ok if (f {nest('?x', depth // 2)}) = (g {nest('?x', depth // 2)})\n")


def deep_terms(depth: int) -> str:
    return "\n".join([f"(f {nest('z', depth)})", f"(f {nest('z', depth - 1)})", f"(f {nest('(s 1)', depth)})",
                      "(sum 3)", "(par 5)", "(neg 7)", f"(c {nest('z', depth // 2)})", "(c z)",
                      nest("z", 3 * depth, "wrap")])


def expected_texts(depth: int) -> list[str]:
    return [f"(g {nest('z', depth)})", f"(f {nest('z', depth - 1)})", f"(g {nest('(s 1)', depth)})",
            str(3 * depth), "10", str(7 if depth % 2 == 0 else -7), "ok", "(c z)", nest("z", 3 * depth, "wrap")]


@pytest.mark.parametrize("depth", [400, 5000])
def test_deep_patterns_and_terms_on_every_engine(tmp_path: Path, depth: int, python_default_stack: None) -> None:
    rs = ruleset_of(deep_rules(depth), "deep.farm")
    engine = Engine(FarmConfig(cache_dir=tmp_path, opt_level=0))
    assert str(rs.rules[0].source).count("(s ") == depth and len(rs.fingerprint()) == 64
    graph = TermGraph(rs.make_signature())
    roots = graph.parse(deep_terms(depth))
    interpreted = Interpreter(rs).rewrite(graph, roots)
    assert interpreted.texts() == expected_texts(depth)
    native = engine.rewrite(rs, graph, roots, "deep", engine="native")
    assert native.engine == "native" and native.texts() == interpreted.texts()
    assert native.firings == interpreted.firings and native.steps == interpreted.steps
    # The forms a ruleset travels in: JSON in artifacts and cluster messages, pickles to the process pool.
    assert ruleset_from_json(ruleset_to_json(rs)).fingerprint() == rs.fingerprint()
    assert pickle.loads(pickle.dumps(rs)) == rs
    report = differential(rs, None, 20, seed=depth)
    assert report.ok and report.oracle_checked == 20


def test_deep_rules_through_the_cli(tmp_path: Path) -> None:
    """The deep rule and the long computed literal (the CLI pays code generation even on a cache hit, so the
    other rules, checked through the API above, are left out to keep the test short)."""
    depth = 5000
    rules, terms = tmp_path / "deep.farm", tmp_path / "deep.terms"
    rules.write_text("".join(deep_rules(depth).splitlines(keepends=True)[:2]))
    terms.write_text("\n".join(deep_terms(depth).splitlines()[:4]))
    outputs = []
    for engine in ("native", "interpreter"):
        result = farm("rewrite", str(rules), str(terms), "--engine", engine, cache=tmp_path, FARM_OPT_LEVEL="0")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"by the {engine}" in result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] and outputs[0].splitlines() == expected_texts(depth)[:4]
    for args in (["verify", str(rules), "--cases", "20", "--engine", "interpreter"],
                 ["codegen", str(rules), "--lang", "rust", "-o", str(tmp_path / "deep.rs")]):
        result = farm(*args, cache=tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr[-2000:])


@pytest.mark.parametrize("text", ["rule a: (f " * 3 + "?x => ?x", "rule a: (f {((?x) + 1} => ?x",
                                  "rule a: " + "(f " * 3000 + "?x" + ")" * 2999 + " => ?x"],
                         ids=["unclosed", "computed", "deep"])
def test_unclosed_deep_patterns_are_parse_errors(text: str, python_default_stack: None) -> None:
    with pytest.raises(ParseError, match="expected"):
        parse_rules(text, "open.farm")


# ---- 6. a conflicting operator redeclaration --------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "earlier"), [
    ("op f/1, f/2\n", 1, "x.farm:1:4"),
    ("op f/1\nop f/2\n", 2, "x.farm:1:4"),
    ("op g/0, f/3\n# c\nop h/1,\n   f/0\nrule r: (f ?a ?b ?c) => g\n", 4, "x.farm:1:9"),
])
def test_conflicting_op_redeclaration_names_both_places(text: str, line: int, earlier: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_rules(text, "x.farm")
    assert caught.value.location.line == line and "declared f/" in str(caught.value) and earlier in str(caught.value)


def test_repeating_an_op_declaration_with_the_same_arity_is_fine() -> None:
    assert parse_rules("op f/1, f/1\nop f/1\nrule r: (f ?x) => ?x\n").declared_ops == {"f": 1}


# ---- 10. only regular files, under a size cap ---------------------------------------------------------------

def _special_file(kind: str, tmp_path: Path) -> Path:
    if kind == "dev-zero":
        return Path("/dev/zero")
    if kind == "dev-urandom":
        return Path("/dev/urandom")
    if kind == "directory":
        return tmp_path
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes: reading it would block forever
    else:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))  # the socket file stays after close
    return path


SPECIAL = {"dev-zero": "a character device", "dev-urandom": "a character device", "directory": "a directory",
           "fifo": r"a FIFO \(named pipe\)", "socket": "a socket"}


@pytest.mark.parametrize("special", list(SPECIAL))
@pytest.mark.parametrize("kind", [RULES, TERMS, CONFIG], ids=lambda k: k.name)
def test_non_regular_inputs_are_refused_before_reading(tmp_path: Path, special: str, kind: InputKind) -> None:
    path = _special_file(special, tmp_path)
    with pytest.raises(NotARegularFile, match=f"{SPECIAL[special]}, not a regular file"):
        read_input_text(path, kind)


@pytest.mark.parametrize("kind", [RULES, TERMS, CONFIG], ids=lambda k: k.name)
@pytest.mark.parametrize("cap", ["10", "1K", "2k", "1M"])
def test_oversized_inputs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: InputKind,
                                      cap: str) -> None:
    monkeypatch.setenv(kind.variable, cap)
    limit = kind.cap()
    path = tmp_path / "big"
    path.write_bytes(b"#" * limit)
    assert len(read_input_text(path, kind)) == limit  # exactly the cap is allowed
    path.write_bytes(b"#" * (limit + 1))
    with pytest.raises(InputTooLarge, match=kind.variable) as caught:
        read_input_text(path, kind)
    assert caught.value.limit == limit


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5M", "12P", "M"])
def test_size_cap_variables_are_validated(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(TERMS.variable, value)
    with pytest.raises(ConfigError, match=TERMS.variable):
        TERMS.cap()


def test_default_caps_hold_the_examples() -> None:
    for path in EXAMPLES.glob("*.farm"):
        assert load_rules(path).patterns
    assert RULES.default_cap < TERMS.default_cap and CONFIG.default_cap <= RULES.default_cap


def test_config_file_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a directory, not a regular file"):
        read_config_file(tmp_path)
    with pytest.raises(ConfigError, match="no such config file"):
        FarmConfig.from_env({"FARM_CONFIG": str(tmp_path / "missing.conf")})


def test_missing_input_is_typed(tmp_path: Path) -> None:
    with pytest.raises(InputUnreadable, match="no such term file"):
        read_input_text(tmp_path / "none.terms", TERMS)


@pytest.mark.parametrize("special", ["dev-zero", "fifo", "directory"])
def test_cli_refuses_special_files_quickly(tmp_path: Path, special: str) -> None:
    path = str(_special_file(special, tmp_path))
    rules = str(EXAMPLES / "bool.farm")
    cap = 4 << 30
    assert_clean_error(farm("compile", path, cache=tmp_path, memory_cap=cap), path, "not a regular file")
    assert_clean_error(farm("rewrite", rules, path, "--engine", "interpreter", cache=tmp_path, memory_cap=cap), path,
                       "not a regular file")
    assert_clean_error(farm("stats", cache=tmp_path, memory_cap=cap, FARM_CONFIG=path), path, "not a regular file")


def test_cli_refuses_an_oversized_rule_file(tmp_path: Path) -> None:
    rules = tmp_path / "big.farm"
    rules.write_text("rule a: (f ?x) => ?x\n" * 100)
    assert_clean_error(farm("compile", str(rules), cache=tmp_path, FARM_MAX_RULE_FILE_BYTES="1K"), str(rules),
                       "cap of 1,024 bytes", "FARM_MAX_RULE_FILE_BYTES")
    assert_clean_error(farm("compile", str(rules), cache=tmp_path, FARM_MAX_RULE_FILE_BYTES="lots"),
                       "FARM_MAX_RULE_FILE_BYTES='lots'")


# ---- 3b. conditions nest normalisations: the one bounded recursion, the same bound on every engine ----------

CONDITIONAL = "rule base: (f z) => t\nrule step: (f (s ?x)) => t if (f ?x) = t\n"


@pytest.mark.parametrize("depth", [MAX_CONDITION_DEPTH, MAX_CONDITION_DEPTH + 1, 3 * MAX_CONDITION_DEPTH])
def test_nested_conditions_are_bounded_alike_on_every_engine(session_engine: Engine, depth: int,
                                                              python_default_stack: None) -> None:
    """A term needing `depth` nested normalisations (the root's, then one per condition): its normal form up
    to the bound, the same ConditionsTooDeep past it (not a RecursionError, not a stack overflow), on every
    engine, the oracle included."""
    rs = ruleset_of(CONDITIONAL, "cond.farm")
    graph = TermGraph(rs.make_signature())
    roots = graph.parse(f"(f {nest('z', depth - 1)})")
    interpreted = Interpreter(rs).rewrite(graph, roots)
    native = session_engine.rewrite(rs, graph, roots, "cond", engine="native")
    assert native.texts() == interpreted.texts() and native.firings == interpreted.firings
    assert native.steps == interpreted.steps
    term = from_graph(graph, roots[0])
    if depth <= MAX_CONDITION_DEPTH:
        assert interpreted.texts() == ["t"] and Oracle(rs).normalize(term) == ("t",)
        return
    outcome = interpreted.outcomes[0]
    assert isinstance(outcome, ConditionsTooDeep) and f"deeper than {MAX_CONDITION_DEPTH} levels" in str(outcome)
    with pytest.raises(ConditionsTooDeep):
        Oracle(rs).normalize(term)


def test_deeply_nested_conditions_through_the_cli(tmp_path: Path) -> None:
    """50,000 nested conditions overflowed the native stack on main (SIGSEGV) and the interpreter's (traceback)."""
    rules, terms = tmp_path / "cond.farm", tmp_path / "cond.terms"
    rules.write_text(CONDITIONAL)
    terms.write_text(f"(f {nest('z', 50_000)})\n(f (s (s z)))\n")
    outputs = []
    for engine in ("native", "interpreter"):
        result = farm("rewrite", str(rules), str(terms), "--engine", engine, cache=tmp_path, FARM_OPT_LEVEL="0")
        assert result.returncode == 1 and "Traceback" not in result.stderr, (result.returncode, result.stderr[-2000:])
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].splitlines()[0].startswith(f"error: conditions nest deeper than {MAX_CONDITION_DEPTH} levels")
    assert outputs[0].splitlines()[1] == "t"


def test_rust_target_bounds_nested_conditions_alike(tmp_path: Path) -> None:
    from farm.compiler.codegen.rust import harness_input, harness_output

    from .test_text_targets import rust_binary

    rs = ruleset_of(CONDITIONAL, "cond.farm")
    binary = rust_binary(rs, tmp_path)
    graph = TermGraph(rs.make_signature())
    roots = graph.parse(f"(f {nest('z', MAX_CONDITION_DEPTH - 1)}) (f {nest('z', 50_000)})")
    proc = subprocess.run([str(binary)], input=harness_input(rs, graph, roots, 10_000_000), capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results, counters = harness_output(rs, graph, proc.stdout)
    interpreted = Interpreter(rs).rewrite(graph, roots)
    assert results[0] == "t" and results[1].startswith("error -6 ") and counters == interpreted.firings


# ---- generated deep expressions: print, parse, compare, hash, serialise, all without recursion ---------------

LAYER = st.tuples(st.sampled_from(["wrap", "pair-left", "pair-right", "computed"]),
                  st.sampled_from(["+", "-", "*", "&", "|", "^", "<<", ">>", "neg"]), st.integers(-50, 50))


def build_expression(layers: list[tuple[str, str, int]]) -> App:
    """A target as deep as `layers` is long: applications wrap it, and one computed literal grows a chain of
    arithmetic on ?a and ?b (left-deep binary operators and nested negations); the text stays linear."""
    expr: PatternExpr = Var("a")
    arith: LitExpr = Var("b")
    for kind, op, value in layers:
        if kind == "computed":
            operand: LitExpr = Lit(value) if value <= 0 else Var("a")  # `-5` reads back as the literal -5
            arith = Neg(arith) if op == "neg" else BinOp(op, arith, operand)
            continue
        if kind == "wrap":
            expr = App("f", (expr,))
        else:
            leaf: PatternExpr = Lit(value) if op == "neg" else Computed(BinOp(op, Var("b"), Lit(value)))
            expr = App("g", (expr, leaf) if kind == "pair-left" else (leaf, expr))
    return App("k", (expr, Computed(arith)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(LAYER, min_size=1, max_size=8), st.integers(1, 600))
def test_generated_deep_expressions_round_trip(motif: list[tuple[str, str, int]], repeats: int) -> None:
    """A motif of layers repeated up to 600 times (up to 4,800 levels), at Python's default recursion limit."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        target = build_expression(motif * repeats)
        parsed = parse_rules(f"rule r: (h ?a ?b) => {target} if const(?a), const(?b)\n", "gen.farm")
        assert parsed.patterns[0].target == target and hash(parsed.patterns[0].target) == hash(target)
        assert str(parsed.patterns[0].target) == str(target) and repr(parsed.patterns[0].target) == repr(target)
        rs = ruleset_of(f"rule r: (h ?a ?b) => {target} if const(?a), const(?b)\n", "gen.farm")
        assert ruleset_from_json(ruleset_to_json(rs)) == rs and pickle.loads(pickle.dumps(rs)) == rs
        graph = TermGraph(rs.make_signature())
        root = graph.parse("(h 3 -4)")
        assert Interpreter(rs).rewrite(graph, root).texts()[0].startswith("(k ")
    finally:
        sys.setrecursionlimit(old)


# ---- a rule file whose name is not UTF-8 ----

@pytest.mark.parametrize("command", ["compile", "rewrite"])
def test_a_rule_file_named_in_latin_1_compiles_under_an_escaped_pattern_id(tmp_path: Path, command: str) -> None:
    """The pattern ID is the file's stem; a Latin-1 `règles.farm` reaches Python as 'r\\udce9gles', which the
    index could not store: a UnicodeEncodeError traceback from `farm compile` and `farm rewrite`."""
    rules = Path(os.fsdecode(bytes(tmp_path) + b"/r\xe9gles.farm"))
    rules.write_text((EXAMPLES / "bool.farm").read_text())
    extra = [str(EXAMPLES / "bool.terms")] if command == "rewrite" else []
    proc = farm(command, str(rules), *extra, cache=tmp_path / "cache")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    from farm.cache.index.sqlite import SQLiteIndex

    index = SQLiteIndex(tmp_path / "cache" / "index.sqlite")
    assert any(index.lookup("r\\xe9gles", target) for target in ("native", "x86-64", "x86-64-v2", "x86-64-v3",
                                                                  "x86-64-v4", "aarch64"))


@pytest.mark.parametrize("pattern_id", ["\ud800", "a\udce9b", "x" * 10 + "\udfff"])
def test_a_pattern_id_with_a_lone_surrogate_is_refused_as_such(tmp_path: Path, pattern_id: str) -> None:
    from farm.cache.pull import pull
    from farm.errors import InvalidPatternId

    engine = Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=0))
    with pytest.raises(InvalidPatternId, match="not Unicode text: a lone surrogate"):
        engine.compile(ruleset_of("rule r: (f ?x) => ?x"), pattern_id, "x86-64")
    with pytest.raises(InvalidPatternId, match="lone surrogate"):
        pull(pattern_id, FarmConfig(cache_dir=tmp_path / "cache"), "x86-64")


# ---- a normal form that shares subterms prints exponentially long ----

DOUBLING = "op dup/1, pair/2, s/1, z/0\nrule d0: (dup z) => z\nrule ds: (dup (s ?x)) => (pair (dup ?x) (dup ?x))\n"


def test_a_normal_form_too_long_to_print_is_an_error_not_gigabytes(tmp_path: Path) -> None:
    """(dup s^50(z)) normalises to 51 shared nodes whose text has 2^50 leaves: `farm rewrite` grew past 7 GB in a
    minute building it. Printed in full a normal form may take FARM_MAX_MEMORY characters; past it, an error."""
    (tmp_path / "dup.farm").write_text(DOUBLING)
    (tmp_path / "dup.terms").write_text("(dup " + "(s " * 50 + "z" + ")" * 50 + ")\n(dup (s (s z)))\n")
    result = farm("rewrite", str(tmp_path / "dup.farm"), str(tmp_path / "dup.terms"), cache=tmp_path / "cache",
                  memory_cap=2 << 30)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    first, second = result.stdout.splitlines()
    assert first.startswith("error: the normal form shares subterms, and printed in full it is ")
    assert "past the memory cap FARM_MAX_MEMORY=" in first
    assert second == "(pair (pair z z) (pair z z))"


@pytest.mark.parametrize("name", ["arith", "bool", "big"])
def test_text_length_is_the_length_of_the_text(name: str) -> None:
    rules = ruleset_of((EXAMPLES / f"{name}.farm").read_text())
    graph = TermGraph(rules.make_signature())
    roots = graph.parse((EXAMPLES / f"{name}.terms").read_text())
    result = Interpreter(rules).rewrite(graph, roots)
    for root in roots:
        assert graph.text_length(root) == len(graph.to_text(root))
    for outcome in result.outcomes:
        if isinstance(outcome, int):
            assert result.graph.text_length(outcome) == len(result.graph.to_text(outcome))


def test_pull_rewrite_prints_a_too_long_normal_form_as_an_error(tmp_path: Path) -> None:
    Engine(FarmConfig(cache_dir=tmp_path / "cache", opt_level=0)).compile(ruleset_of(DOUBLING), "dup", "x86-64")
    (tmp_path / "dup.terms").write_text("(dup " + "(s " * 50 + "z" + ")" * 50 + ")\n(dup (s z))\n")
    result = farm("pull", "dup", "--target", "x86-64", "--rewrite", str(tmp_path / "dup.terms"),
                  cache=tmp_path / "cache", memory_cap=2 << 30)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "past the memory cap FARM_MAX_MEMORY=" in lines[-2] and lines[-1] == "(pair z z)"
