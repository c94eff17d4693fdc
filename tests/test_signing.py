"""Ed25519 signatures: builders sign with a private key file, nodes verify with public keys only, so no node
can make a signature the others accept. Rotation, unsigned and tampered artifacts, legacy HMAC signatures,
`farm keygen`, and key files that are missing, open to others or of the wrong kind."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.cache.builder import Artifact, ArtifactBuilder
from farm.cache.engine import load_native
from farm.cache.jit import JitCompiler, JitConfig
from farm.cache.signing import (
    KeyPair,
    Signer,
    TrustedKeys,
    key_id,
    load_private_key,
    load_public_key,
    signer_of,
    trusted_keys_of,
    write_key_pair,
)
from farm.cache.store import ArtifactMeta
from farm.cli import main
from farm.config import FarmConfig
from farm.errors import (
    BadSignature,
    ConfigError,
    KeyFileError,
    LegacySignature,
    SignatureError,
    UnsignedArtifact,
    UntrustedSigner,
)
from farm.lang.terms import TermGraph

from .conftest import ROOT, ruleset_of

PEANO = "rule p0: (plus 0 ?y) => ?y\nrule ps: (plus (s ?x) ?y) => (s (plus ?x ?y))"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    where = tmp_path_factory.mktemp("signing-keys")
    return {name: write_key_pair(where / name) for name in ("a", "b")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, KeyPair]) -> dict[str, Artifact]:
    """PEANO built by builder A, builder B, and a node that holds only A's public key (it cannot sign)."""
    configs = {"a": FarmConfig(signing_key=keys["a"].private_path),
               "b": FarmConfig(signing_key=keys["b"].private_path),
               "node": FarmConfig(verify_keys=(keys["a"].public_path,))}
    artifacts = {}
    for name, config in configs.items():
        config.cache_dir, config.opt_level = tmp_path_factory.mktemp(f"cache-{name}"), 0
        artifacts[name] = ArtifactBuilder(config).ensure_ruleset(ruleset_of(PEANO), "peano", "x86-64")
    return artifacts


def node(*pairs: KeyPair) -> TrustedKeys:
    """What a node holding only these public key files trusts."""
    trusted = trusted_keys_of(FarmConfig(verify_keys=tuple(p.public_path for p in pairs)))
    assert trusted is not None
    return trusted


def sample_meta(**changes: Any) -> ArtifactMeta:
    meta = ArtifactMeta(key="ab" * 32, sha256="cd" * 32, size=16_384, target="x86-64", triple="x86_64-pc-linux-gnu",
                        cpu="x86-64", opt_level=2, toolchain={"llc": "16.0.6", "ld.lld": "16.0.6"},
                        ruleset='{"format":1}', pattern_ids=["p"])
    return dataclasses.replace(meta, **changes)


def signed_by(pair: KeyPair, meta: ArtifactMeta) -> ArtifactMeta:
    return dataclasses.replace(meta, signature=Signer(load_private_key(pair.private_path)).sign(meta))


def rewrites(artifact: Artifact, trusted: TrustedKeys) -> str:
    native = load_native(ruleset_of(PEANO), artifact, trusted)
    graph = TermGraph(native.ruleset.make_signature())
    return native.rewrite(graph, graph.parse("(plus (s (s 0)) (s 0))")).texts()[0]


# ---- a node cannot sign ----

def test_a_node_with_only_the_public_key_cannot_sign_what_others_accept(keys: dict[str, KeyPair],
                                                                       built: dict[str, Artifact]) -> None:
    a, b = keys["a"], keys["b"]
    node_config = FarmConfig(verify_keys=(a.public_path,))
    # No path to a signature: no signer from the config, none from a public key file or object.
    assert signer_of(node_config) is None
    with pytest.raises(KeyFileError, match="this is a public key"):
        load_private_key(a.public_path)
    with pytest.raises(TypeError, match="Ed25519 private key"):
        Signer(load_public_key(a.public_path))  # type: ignore[arg-type]
    # What such a node builds is unsigned, and refused by every node, itself included.
    assert built["node"].meta.signature == ""
    for trusted in (node(a), node(a, b)):
        with pytest.raises(UnsignedArtifact, match="is not signed"):
            load_native(ruleset_of(PEANO), built["node"], trusted)
    # Forged metadata: signed with a key the node made itself, a valid signature copied from another
    # artifact, the trusted key's id with made-up bytes.
    genuine = built["a"].meta
    with pytest.raises(UntrustedSigner, match=f"signed by key '{b.key_id}'") as info:
        node(a).verify(signed_by(b, genuine))
    assert info.value.key_id == b.key_id
    other = signed_by(a, sample_meta())
    with pytest.raises(BadSignature, match=f"bad signature for key {a.key_id}"):
        node(a).verify(dataclasses.replace(genuine, signature=other.signature))
    made_up = f"ed25519:{a.key_id}:" + "A" * 86 + "=="
    with pytest.raises(BadSignature, match="bad signature"):
        node(a).verify(dataclasses.replace(genuine, signature=made_up))
    assert rewrites(built["a"], node(a)) == "(s (s (s 0)))"


# ---- rotation ----

def test_rotation_two_trusted_keys_load_either_then_the_dropped_one_is_refused_by_id(
        keys: dict[str, KeyPair], built: dict[str, Artifact]) -> None:
    a, b = keys["a"], keys["b"]
    both = trusted_keys_of(FarmConfig.from_env({"FARM_VERIFY_KEY": f" {a.public_path} ,{b.public_path},"}))
    assert both is not None and set(both.by_id) == {a.key_id, b.key_id}
    assert rewrites(built["a"], both) == rewrites(built["b"], both) == "(s (s (s 0)))"
    only_b = trusted_keys_of(FarmConfig.from_env({"FARM_VERIFY_KEY": str(b.public_path)}))
    assert only_b is not None
    assert rewrites(built["b"], only_b) == "(s (s (s 0)))"
    with pytest.raises(UntrustedSigner, match=f"signed by key '{a.key_id}', which this node does not trust "
                                              fr"\(trusted keys: {b.key_id}\)") as info:
        load_native(ruleset_of(PEANO), built["a"], only_b)
    assert info.value.key_id == a.key_id


def test_a_builder_trusts_its_own_key_and_its_verify_keys(keys: dict[str, KeyPair]) -> None:
    a, b = keys["a"], keys["b"]
    own = trusted_keys_of(FarmConfig(signing_key=a.private_path))
    assert own is not None and set(own.by_id) == {a.key_id}
    more = trusted_keys_of(FarmConfig(signing_key=a.private_path, verify_keys=(b.public_path,)))
    assert more is not None and set(more.by_id) == {a.key_id, b.key_id}
    assert trusted_keys_of(FarmConfig()) is None


# ---- unsigned ----

@pytest.mark.parametrize("holds", ["verify key", "signing key", "both"])
def test_unsigned_artifacts_are_refused_once_any_key_is_configured(keys: dict[str, KeyPair],
                                                                   built: dict[str, Artifact], holds: str) -> None:
    a = keys["a"]
    config = FarmConfig(signing_key=a.private_path if holds != "verify key" else None,
                        verify_keys=(a.public_path,) if holds != "signing key" else ())
    unsigned = dataclasses.replace(built["a"], meta=dataclasses.replace(built["a"].meta, signature=""))
    with pytest.raises(UnsignedArtifact, match=f"artifact {unsigned.meta.key[:12]} is not signed.*{a.key_id}"):
        load_native(ruleset_of(PEANO), unsigned, trusted_keys_of(config))
    assert rewrites(unsigned, trusted_keys_of(FarmConfig())) == "(s (s (s 0)))"  # no key: sha256 only, as before


def test_the_jit_refuses_an_unsigned_library_on_a_node_with_a_verify_key(keys: dict[str, KeyPair], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_VERIFY_KEY", str(keys["a"].public_path))
    jit = JitCompiler(JitConfig(work_dir=tmp_path / "work", cache_dir=tmp_path / "cache", optimization_level=0))
    with pytest.raises(UnsignedArtifact):
        jit.compile_llvm_ir("define i64 @seven() {\n  ret i64 7\n}\n", "seven")


def test_an_hmac_signature_from_before_is_refused_saying_so(keys: dict[str, KeyPair]) -> None:
    meta = sample_meta()
    old = hmac.new(b"shared-secret", f"{meta.key}:{meta.sha256}:{meta.target}".encode(), hashlib.sha256).hexdigest()
    with pytest.raises(LegacySignature, match="HMAC-SHA256 signature .* no longer accepted"):
        node(keys["a"]).verify(dataclasses.replace(meta, signature=old))


# ---- tampering with what is signed ----

SIGNED_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "key": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    "sha256": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    "size": st.integers(min_value=0, max_value=1 << 40),
    "target": st.sampled_from(["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4", "aarch64", "native"]),
    "triple": st.sampled_from(["x86_64-pc-linux-gnu", "aarch64-unknown-linux-gnu", "x86_64-unknown-linux-gnu"]),
    "cpu": st.text(min_size=1, max_size=20),
    "opt_level": st.integers(min_value=-1, max_value=4),
    "toolchain": st.dictionaries(st.sampled_from(["llc", "opt", "ld.lld", "llvm-as"]), st.text(max_size=12)),
    "ruleset": st.text(max_size=200),
}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_changing_any_signed_field_breaks_the_signature(keys: dict[str, KeyPair], data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(SIGNED_FIELDS)), label="field")
    meta = signed_by(keys["a"], sample_meta())
    value = data.draw(SIGNED_FIELDS[field].filter(lambda v: v != getattr(meta, field)), label="value")
    with pytest.raises(BadSignature, match=f"artifact {str(meta.key if field != 'key' else value)[:12]} has a bad"):
        node(keys["a"]).verify(dataclasses.replace(meta, **{field: value}))


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_changing_any_byte_of_the_signature_is_refused(keys: dict[str, KeyPair], position: int, flip: int) -> None:
    meta = signed_by(keys["a"], sample_meta())
    raw = bytearray(meta.signature.encode())
    raw[position % len(raw)] ^= flip
    tampered = raw.decode("latin-1")
    with pytest.raises(SignatureError):  # bad bytes, an unknown key id, or an unknown scheme
        node(keys["a"]).verify(dataclasses.replace(meta, signature=tampered))


def test_informational_fields_are_not_signed(keys: dict[str, KeyPair]) -> None:
    """Timings, dates and pattern IDs may change (the index, not the artifact, says which patterns use it)."""
    meta = signed_by(keys["a"], sample_meta())
    node(keys["a"]).verify(dataclasses.replace(meta, created_at=0.0, stage_seconds={"llc": 9.0},
                                               pattern_ids=["other"], objects_compiled=7, objects_reused=3))


# ---- farm keygen ----

def test_keygen_writes_a_private_0600_and_a_public_0644_key_and_never_overwrites(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "builders"
    assert main(["keygen", "-o", str(prefix)]) == 0
    printed = capsys.readouterr().out
    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    assert os.stat(private).st_mode & 0o777 == 0o600 and os.stat(public).st_mode & 0o777 == 0o644
    public_key = load_public_key(public)
    assert key_id(load_private_key(private).public_key()) == key_id(public_key)
    assert str(private) in printed and str(public) in printed and key_id(public_key) in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    before = private.read_bytes(), public.read_bytes()
    assert main(["keygen", "-o", str(prefix)]) == 2
    assert "exists; refusing to overwrite" in capsys.readouterr().err
    assert (private.read_bytes(), public.read_bytes()) == before
    # Either half already there is enough to refuse, and nothing is written.
    lone = tmp_path / "lone"
    Path(f"{lone}.pub").write_text("mine")
    assert main(["keygen", "-o", str(lone)]) == 2
    assert not Path(f"{lone}.key").exists() and Path(f"{lone}.pub").read_text() == "mine"


def test_keygen_default_prefix_is_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keygen"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["farm-signing.key", "farm-signing.pub"]


# ---- key files that are not right ----

def pem_private(key: Any, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)  # type: ignore[no-any-return]


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


ED = ed25519.Ed25519PrivateKey.generate()
BAD_KEY_FILES: list[tuple[str, str, bytes | None, int, str]] = [
    # (variable, case, content (None: no file), mode, expected problem)
    ("FARM_SIGNING_KEY", "missing", None, 0o600, "no such key file"),
    ("FARM_VERIFY_KEY", "missing", None, 0o644, "no such key file"),
    ("FARM_SIGNING_KEY", "old HMAC secret", None, 0o600, "names no file; it must be the path of a key file"),
    ("FARM_SIGNING_KEY", "empty", b"", 0o600, "not a PEM PKCS8 Ed25519 private key"),
    ("FARM_VERIFY_KEY", "empty", b"", 0o644, "not a PEM Ed25519 public key"),
    ("FARM_SIGNING_KEY", "garbage", os.urandom(300), 0o600, "not a PEM PKCS8 Ed25519 private key"),
    ("FARM_VERIFY_KEY", "garbage", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", 0o644,
     "not a PEM Ed25519 public key"),
    ("FARM_VERIFY_KEY", "too large", b"#" * (65 << 10), 0o644, "larger than"),
    *[("FARM_SIGNING_KEY", f"mode {mode:04o}", pem_private(ED), mode,
       rf"the private key is open to other users \(mode {mode:04o}\)")
      for mode in (0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o644, 0o666)],
    ("FARM_SIGNING_KEY", "public key", pem_public(ED), 0o600, "this is a public key"),
    ("FARM_VERIFY_KEY", "private key", pem_private(ED), 0o600, "this is a private key; nodes hold only public"),
    ("FARM_SIGNING_KEY", "RSA", pem_private(rsa.generate_private_key(65537, 2048)), 0o600, "a RSA private key"),
    ("FARM_VERIFY_KEY", "EC", pem_public(ec.generate_private_key(ec.SECP256R1())), 0o644, "a EC public key"),
    ("FARM_SIGNING_KEY", "encrypted", pem_private(ED, b"pw"), 0o600, "the private key is encrypted"),
]


def place(tmp_path: Path, case: str, content: bytes | None, mode: int) -> str:
    if case == "old HMAC secret":
        return "test-signing-key"  # what FARM_SIGNING_KEY held before: now read as a path that does not exist
    path = tmp_path / f"{case.replace(' ', '-')}.pem"
    if content is not None:
        path.write_bytes(content)
        path.chmod(mode)
    return str(path)


@pytest.mark.parametrize(("variable", "case", "content", "mode", "problem"), BAD_KEY_FILES,
                         ids=[f"{v}-{c}" for v, c, *_ in BAD_KEY_FILES])
def test_a_bad_key_file_is_a_config_error_naming_the_variable_and_file(
        tmp_path: Path, variable: str, case: str, content: bytes | None, mode: int, problem: str) -> None:
    value = place(tmp_path, case, content, mode)
    config = FarmConfig.from_env({variable: value, "FARM_CACHE_DIR": str(tmp_path / "cache")})
    shown = "<not shown>" if case == "old HMAC secret" else value  # a secret is never echoed into a log
    with pytest.raises(ConfigError, match=f"^{variable}={re.escape(shown)}: {problem}") as info:
        ArtifactBuilder(config)  # a builder (and so a worker) loads its keys when it starts
    assert isinstance(info.value, KeyFileError) and info.value.variable == variable and info.value.path == shown
    assert case != "old HMAC secret" or value not in str(info.value)


@pytest.mark.parametrize("variable", ["FARM_SIGNING_KEY", "FARM_VERIFY_KEY"])
def test_key_files_that_are_not_regular_files_are_refused(tmp_path: Path, variable: str) -> None:
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path, tmp_path / "fifo", Path("/dev/zero")):
        config = FarmConfig.from_env({variable: str(path)})
        with pytest.raises(KeyFileError, match=f"{variable}={path}: not a regular file"):
            trusted_keys_of(config)


@pytest.mark.parametrize("command", [["compile", "RULES"], ["pull", "p"], ["worker", "--targets", "x86-64"]])
def test_the_cli_reports_a_bad_key_in_one_line_with_exit_code_2(tmp_path: Path, command: list[str]) -> None:
    rules = tmp_path / "peano.farm"
    rules.write_text(PEANO)
    key = tmp_path / "builders.key"
    key.write_bytes(pem_private(ED))
    key.chmod(0o644)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARM_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "300",
           "FARM_SIGNING_KEY": str(key), "FARM_REDIS_URL": "redis://127.0.0.1:9/0", "FARM_S3_ENDPOINT": "127.0.0.1:9"}
    argv = [str(rules) if a == "RULES" else a for a in command]
    run = subprocess.run([sys.executable, "-m", "farm.cli", *argv], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"FARM_SIGNING_KEY={key}: the private key is open to other users (mode 0644)" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


# ---- an index entry cannot send a node a signed artifact built for another target ----

def test_pull_refuses_a_signed_artifact_the_index_files_under_another_target(keys: dict[str, KeyPair],
                                                                              tmp_path: Path) -> None:
    """The index (Redis in a cluster) is not signed: whoever can write it can point a pattern's x86-64 entry at
    any signed artifact. The signature covers the artifact's target, so the node compares it with the entry it
    looked up: an x86-64-v4 library under the x86-64 entry would otherwise run AVX-512 code on a host without
    it (SIGILL), an aarch64 one fail in dlopen."""
    from farm.cache.pull import pull
    from farm.errors import IncompatibleArtifact

    builder = ArtifactBuilder(FarmConfig(cache_dir=tmp_path / "c", opt_level=0, signing_key=keys["a"].private_path))
    other = builder.ensure_ruleset(ruleset_of(PEANO), "peano", "aarch64")
    builder.index.record("peano", "x86-64", other.meta)  # an index writer's edit: it needs no key
    node_config = FarmConfig(cache_dir=tmp_path / "c", verify_keys=(keys["a"].public_path,))
    with pytest.raises(IncompatibleArtifact, match="built for aarch64"):
        pull("peano", node_config, "x86-64")
