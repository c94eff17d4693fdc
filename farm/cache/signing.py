"""Ed25519 signatures of artifacts: a pulled .so is code that will run, so a builder must have vouched for it.

Builders hold the private key (FARM_SIGNING_KEY, a PEM PKCS8 file only its owner may read); nodes hold only
public keys (FARM_VERIFY_KEY, one or more PEM files), so no node can sign what the others load. Several
public keys may be trusted at once (rotation); a signature names the key that made it by its key id.

The signature covers a canonical, domain-separated message of the fields that make the artifact (see
`signed_message`). It is stored in ArtifactMeta.signature as `ed25519:<key id>:<base64 signature>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from farm.cache.store import ArtifactMeta
from farm.errors import (
    BadSignature,
    KeyFileError,
    KeyFileExists,
    LegacySignature,
    UnsignedArtifact,
    UntrustedSigner,
    WorkDirError,
)

# cryptography is imported where keys are loaded, made or used: a process with no key configured (every cache hit
# of the embedded default) never pays for loading it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from farm.config import FarmConfig

SCHEME = "ed25519"
# Bound into every signed message, so a signature over an artifact cannot be replayed as anything else.
DOMAIN = b"farm artifact signature v1\n"
SIGNING_VARIABLE, VERIFY_VARIABLE = "FARM_SIGNING_KEY", "FARM_VERIFY_KEY"
MAX_KEY_FILE = 64 << 10  # a PEM Ed25519 key is ~120 bytes; refuse to read /dev/zero or a log by mistake
KEY_ID_HEX = 16


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 64 bits of the sha256 of its raw bytes, in hex."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def signed_message(meta: ArtifactMeta) -> bytes:
    """What a signature vouches for: the fields that make the artifact (the library's bytes through its
    sha256 and size, what it was built for and from). Not the informational ones (timings, created_at,
    pattern IDs: the index, not the artifact, says which patterns use it). JSON with sorted keys and no
    whitespace is canonical; the domain prefix separates it from any other use of the key."""
    fields = {"key": meta.key, "sha256": meta.sha256, "size": meta.size, "target": meta.target,
              "triple": meta.triple, "cpu": meta.cpu, "opt_level": meta.opt_level, "toolchain": meta.toolchain,
              "ruleset_sha256": hashlib.sha256(json.dumps(meta.ruleset).encode()).hexdigest()}
    return DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Signer:
    """A builder's private key. The only way to make a signature: nodes, holding public keys, have none."""

    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise TypeError(f"a Signer needs an Ed25519 private key, not {type(self.private_key).__name__}")

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, meta: ArtifactMeta) -> str:
        signature = base64.b64encode(self.private_key.sign(signed_message(meta))).decode()
        return f"{SCHEME}:{self.key_id}:{signature}"


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a node accepts signatures from, by key id."""

    by_id: Mapping[str, Ed25519PublicKey]

    @classmethod
    def of(cls, keys: Iterable[Ed25519PublicKey]) -> TrustedKeys:
        return cls({key_id(k): k for k in keys})

    def verify(self, meta: ArtifactMeta) -> None:
        """Refuse (each cause its own SignatureError) unless a trusted key signed this metadata's fields."""
        from cryptography.exceptions import InvalidSignature

        name = f"artifact {str(meta.key)[:12]}"
        if not meta.signature:
            raise UnsignedArtifact(f"{name} is not signed, and this node loads only artifacts signed by a key it "
                                   f"trusts ({self.describe()}); was it built without {SIGNING_VARIABLE}? "
                                   "refusing it")
        signature = str(meta.signature)
        scheme, _, rest = signature.partition(":")
        if scheme != SCHEME:
            if _looks_like_hmac(signature):
                raise LegacySignature(f"{name} carries an HMAC-SHA256 signature (farm before Ed25519); shared-"
                                      f"secret signatures are no longer accepted: rebuild it on a builder with "
                                      f"{SIGNING_VARIABLE} set to a private key file (farm keygen); refusing it")
            raise BadSignature(f"{name} has a bad signature: unknown scheme {scheme[:20]!r}, expected "
                               f"{SCHEME!r}; refusing to load it")
        signer, _, encoded = rest.partition(":")
        public_key = self.by_id.get(signer)
        if public_key is None:
            shown = signer[:KEY_ID_HEX * 2]  # the field is the artifact's to choose: bounded in messages
            raise UntrustedSigner(f"{name} is signed by key {shown!r}, which this node does not trust "
                                  f"({self.describe()}); refusing it", shown)
        try:
            raw = base64.b64decode(encoded, validate=True)
            if base64.b64encode(raw).decode() != encoded:  # one encoding per signature: no spare padding bits
                raise ValueError("non-canonical base64")
            public_key.verify(raw, signed_message(meta))
        except (InvalidSignature, binascii.Error, ValueError):
            raise BadSignature(f"{name} has a bad signature for key {signer}: its metadata or its signature was "
                               "altered after signing; refusing to load it") from None

    def describe(self) -> str:
        return "trusted keys: " + ", ".join(sorted(self.by_id))


def verify(meta: ArtifactMeta, trusted: TrustedKeys | None) -> None:
    """With keys configured, the artifact must carry a valid signature by one of them; without, nothing is
    checked here (its sha256 still is, by the loader)."""
    if trusted is not None:
        trusted.verify(meta)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".key", ".pem", ".pub"))


def _looks_like_hmac(signature: str) -> bool:
    return len(signature) == 64 and all(c in "0123456789abcdef" for c in signature)


# ---- key files ----

def _read_key_file(path: Path, variable: str) -> tuple[bytes, int]:
    """The bytes and permission bits of a regular key file (both read through one open file; non-blocking, so
    a FIFO named by mistake is refused rather than waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(variable, str(path), "not a regular file")
            data = os.read(fd, MAX_KEY_FILE + 1)  # one read: a regular file this small is read whole
        finally:
            os.close(fd)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not _looks_like_path(str(path)):
            # Before Ed25519 this variable held an HMAC secret: never echo what may be a secret into a log.
            raise KeyFileError(variable, "<not shown>", "names no file; it must be the path of a key file made by "
                               "`farm keygen` (a shared HMAC secret is no longer used)") from None
        problem = "no such key file" if isinstance(exc, FileNotFoundError) else f"cannot read it: {exc.strerror}"
        raise KeyFileError(variable, str(path), problem) from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(variable, str(path), f"larger than {MAX_KEY_FILE} bytes: not a key file")
    return data, stat.S_IMODE(info.st_mode)


def load_private_key(path: Path, variable: str = SIGNING_VARIABLE) -> Ed25519PrivateKey:
    """The Ed25519 private key of a PEM PKCS8 file that only its owner may read or write."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data, mode = _read_key_file(path, variable)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(variable, str(path), "the private key is encrypted; farm needs it unencrypted "
                           "(protected by its file mode)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(variable, str(path), _not_a_key(data, "a PEM PKCS8 Ed25519 private key")) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(variable, str(path), f"a {_kind(key)} private key; farm signs with Ed25519 "
                           "(`farm keygen` makes a pair)")
    if mode & 0o077:
        # Refused, not warned about (as ssh does): a key others can read may already be theirs, and with it
        # they sign code that every node will run; one others can write may be replaced. A warning in a
        # worker's log goes unread.
        raise KeyFileError(variable, str(path), f"the private key is open to other users (mode {mode:04o}); "
                           f"`chmod 600 {path}` and keep it on builders only")
    return key


def load_public_key(path: Path, variable: str = VERIFY_VARIABLE) -> Ed25519PublicKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data, _ = _read_key_file(path, variable)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(variable, str(path), _not_a_key(data, "a PEM Ed25519 public key")) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(variable, str(path), f"a {_kind(key)} public key; farm verifies Ed25519 signatures")
    return key


def _not_a_key(data: bytes, expected: str) -> str:
    """Why a file did not load as `expected`: said precisely when it is a private key where a public one
    belongs (cryptography's parser decides that, not a reading of the PEM header)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if expected.endswith("public key"):
        try:
            serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            pass
        else:
            return "this is a private key; nodes hold only public keys (the PREFIX.pub file of `farm keygen`)"
    else:
        try:
            serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            pass
        else:
            return "this is a public key; signing needs the private key (the PREFIX.key file of `farm keygen`)"
    return f"not {expected}"


def _kind(key: object) -> str:
    return type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "") or "non-Ed25519"


def signer_of(config: FarmConfig) -> Signer | None:
    """The builder's signer, from FARM_SIGNING_KEY; None when it is unset (artifacts stay unsigned)."""
    return Signer(load_private_key(config.signing_key)) if config.signing_key else None


def trusted_keys_of(config: FarmConfig) -> TrustedKeys | None:
    """The keys this process accepts: every FARM_VERIFY_KEY file and the public half of its own signing
    key; None when neither is set (sha256 only, as before signatures)."""
    keys = [load_public_key(path) for path in config.verify_keys]
    signer = signer_of(config)
    if signer is not None:
        keys.append(signer.public_key)
    return TrustedKeys.of(keys) if keys else None


@dataclass(frozen=True)
class KeyPair:
    """The two key files `write_key_pair` made, and the public key's id."""

    private_path: Path
    public_path: Path
    key_id: str


def write_key_pair(prefix: Path) -> KeyPair:
    """PREFIX.key (PEM PKCS8, mode 0600) and PREFIX.pub (PEM SubjectPublicKeyInfo, 0644), each written
    atomically; an existing file of either name is never overwritten."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from farm.files import atomic_write

    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    if not private_path.parent.is_dir():
        raise WorkDirError(f"cannot write {private_path}: the directory {private_path.parent} does not exist")
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileExists(f"{path} exists; refusing to overwrite a key (choose another prefix with -o)")
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
    public_pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    for path, data, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, 0o644)):
        try:
            atomic_write(path, data, mode=mode, exclusive=True)
        except FileExistsError:  # created by someone else between the check above and this write
            for done in written:
                done.unlink(missing_ok=True)
            raise KeyFileExists(f"{path} exists; refusing to overwrite a key") from None
        written.append(path)
    return KeyPair(private_path, public_path, key_id(private_key.public_key()))


__all__ = ["DOMAIN", "KeyPair", "Signer", "TrustedKeys", "key_id", "load_private_key", "load_public_key",
           "signed_message", "signer_of", "trusted_keys_of", "verify", "write_key_pair"]
