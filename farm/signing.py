"""HMAC-SHA256 signatures of artifacts: a pulled .so is code that will run, so it must be ours."""

from __future__ import annotations

import hashlib
import hmac

from farm.errors import SignatureError
from farm.store import ArtifactMeta


def sign(meta: ArtifactMeta, signing_key: str) -> str:
    message = f"{meta.key}:{meta.sha256}:{meta.target}".encode()
    return hmac.new(signing_key.encode(), message, hashlib.sha256).hexdigest()


def verify(meta: ArtifactMeta, signing_key: str | None) -> None:
    """With a key configured, the artifact must carry a valid signature; without one, nothing is checked."""
    if not signing_key:
        return
    if not meta.signature:
        raise SignatureError(f"artifact {meta.key[:12]} is not signed and FARM_SIGNING_KEY is set; refusing it")
    if not hmac.compare_digest(meta.signature, sign(meta, signing_key)):
        raise SignatureError(f"artifact {meta.key[:12]} has a bad signature; refusing to load it")
