"""Artifact stores: where .so files and their metadata live. One base, one module per backend."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

from farm.errors import ArtifactFormatMismatch, IntegrityError, InvalidArtifactKey
from farm.log import get_logger

log = get_logger(__name__)

# The layout of ArtifactMeta as stored (local JSON files, S3 objects, index rows). Raise it with any change that
# an older reader would get wrong: a reader of another format treats the artifact as missing and rebuilds it.
FORMAT_VERSION = 1


@dataclass
class ArtifactMeta:
    """What is known of a stored library: its key, bytes, target, toolchain, ruleset and build."""

    key: str
    sha256: str
    size: int
    target: str
    triple: str
    cpu: str
    opt_level: int
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pattern_ids: list[str] = field(default_factory=list)
    toolchain: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    signature: str = ""  # "ed25519:<key id>:<base64>" (farm/cache/signing.py) when a signing key is configured
    ruleset: str = ""  # the ruleset as JSON (farm/lang/serialize.py), so a node can load what it pulls
    objects_compiled: int = 0  # modules compiled for this library; the others came from the object cache
    objects_reused: int = 0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, expected_key: str | None = None) -> ArtifactMeta:
        """The metadata; with expected_key, refused unless it describes that artifact (a swapped or
        truncated metadata object must not vouch for the bytes next to it). Metadata in another format is
        ArtifactFormatMismatch, found before any field is read (its fields may mean something else)."""
        try:
            data = json.loads(text)
            _check_format(data, expected_key)
            known = {f for f in cls.__dataclass_fields__}
            meta = cls(**{k: v for k, v in data.items() if k in known})
            _check_types(meta)
        except (ValueError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"the metadata of artifact {(expected_key or '?')[:12]} is unreadable "
                                 f"(truncated or tampered with): {exc}") from None
        if expected_key is not None and meta.key != expected_key:
            raise IntegrityError(f"the metadata stored for artifact {expected_key[:12]} describes artifact "
                                 f"{str(meta.key)[:12]}: swapped; refusing it")
        return meta


def stored_meta(text: str, expected_key: str | None = None) -> ArtifactMeta | None:
    """Metadata as a store or an index holds it; None, a cache miss that leads to a rebuild, when it was written in
    another format."""
    try:
        return ArtifactMeta.from_json(text, expected_key)
    except ArtifactFormatMismatch as exc:
        log.info("%s: treated as a cache miss, rebuilt", exc)
        return None


def _check_format(data: dict[str, object], expected_key: str | None) -> None:
    found = data.get("format_version")  # JSON that is not an object: AttributeError, i.e. unreadable metadata
    if type(found) is not int or found != FORMAT_VERSION:  # 1.0 and true equal 1 in Python: no format numbers
        key = expected_key or str(data.get("key", ""))
        raise ArtifactFormatMismatch(key, found, FORMAT_VERSION)


# The JSON type of each field: a field of another type (a list where a target name belongs) is corrupt metadata,
# refused here rather than a TypeError wherever it is used.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "key": str, "sha256": str, "size": int, "target": str, "triple": str, "cpu": str, "opt_level": int,
    "stage_seconds": dict, "pattern_ids": list, "toolchain": dict, "created_at": (int, float), "signature": str,
    "ruleset": str, "objects_compiled": int, "objects_reused": int, "format_version": int,
}


def _check_types(meta: ArtifactMeta) -> None:
    for name, expected in _FIELD_TYPES.items():
        value = getattr(meta, name)
        if isinstance(value, bool) or not isinstance(value, expected):  # JSON true is not a number here
            raise ValueError(f"field {name!r} is {json.dumps(value)[:40]}, not of type "
                             f"{getattr(expected, '__name__', 'number')}")


def check_key(key: str) -> str:
    """Keys are sha256 hex: the only thing allowed into an object name or a path."""
    if not (isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)):
        raise InvalidArtifactKey(f"not a content key (64 lowercase hex digits): {str(key)[:80]!r}; the index entry "
                                 "naming it is corrupt or was edited")
    return key


class ArtifactStore(ABC):
    """Content-addressed: an artifact's name is its cache key, never a pattern ID."""

    @abstractmethod
    def put(self, so_path: Path, meta: ArtifactMeta) -> None:
        """Store the .so, then its metadata; a reader never sees metadata without the object."""

    @abstractmethod
    def fetch(self, key: str) -> tuple[Path, ArtifactMeta] | None:
        """A local path of the .so (not yet verified) and its metadata, or None."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """Where this node keeps its copy of the .so (valid right after put)."""

    def held_sha256(self, key: str) -> str | None:
        """The sha256 of this node's own copy of the .so, hashed now, or None when it keeps none (or none it can
        read): with a shared store, what a hit can be decided on without asking the store (the caller compares it
        with the indexed sha256). Costs reading the copy, no round trip."""
        from farm.runtime.loader import sha256_file

        path = self.local_path(key)
        try:
            return sha256_file(path)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.info("cannot read this node's copy %s, asking the store instead: %s", path, exc)
            return None

    @abstractmethod
    def delete(self, key: str) -> None: ...
