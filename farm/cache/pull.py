"""`farm pull`: a node fetches the best prebuilt artifact of a pattern for its own CPU, verifies it, loads it.

Preference: an artifact built for exactly this CPU, then x86-64-v4, -v3, -v2 as the host's features allow,
then the baseline of the architecture.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from farm.cache.backends import make_index, make_store
from farm.cache.builder import check_pattern_id
from farm.cache.signing import trusted_keys_of, verify
from farm.cache.store import ArtifactMeta
from farm.compiler.tools import find_tool
from farm.config import FarmConfig
from farm.errors import ArtifactMissing, IncompatibleArtifact
from farm.lang.serialize import ruleset_from_json
from farm.runtime.loader import NativeRuleset, verify_sha256
from farm.targets import REGISTRY, host_can_run, host_cpu


@dataclass
class Pulled:
    meta: ArtifactMeta
    path: Path
    native: NativeRuleset | None
    signature_checked: bool


def preference(host_cpu_name: str | None = None) -> list[str]:
    """Registered targets this host can run, best first."""
    arch = {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
    exact = [t.name for t in REGISTRY.values() if t.arch == arch and t.cpu == host_cpu_name]
    ladder = ["x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64"] if arch == "x86_64" else ["aarch64"]
    return [name for name in dict.fromkeys(exact + ladder) if host_can_run(REGISTRY[name])]


def pull(pattern_id: str, config: FarmConfig, target: str | None = None) -> Pulled:
    check_pattern_id(pattern_id)
    trusted = trusted_keys_of(config)
    index = make_index(config)
    store = make_store(config, index)
    try:
        cpu = host_cpu(find_tool("llc"))
    except Exception:  # a node may pull without LLVM installed
        cpu = None
    candidates = [target] if target else preference(cpu)
    for name in candidates:
        key = index.lookup(pattern_id, name)
        if key is None:
            continue
        fetched = store.fetch(key)  # downloads and checks sha256; None when the object is gone
        if fetched is None:
            continue
        path, meta = fetched
        if target and not host_can_run(REGISTRY[target]):
            raise IncompatibleArtifact(f"{pattern_id!r} for {target} cannot run on this host")
        verify_sha256(path, meta.sha256)
        verify(meta, trusted)
        if meta.target != name:  # the index is not signed; the artifact's target is
            raise IncompatibleArtifact(f"the index entry of {pattern_id!r} for {name} points at artifact "
                                       f"{meta.key[:12]}, built for {meta.target}; refusing it (the index was "
                                       "edited or is corrupt)")
        native = NativeRuleset(path, ruleset_from_json(meta.ruleset), meta.sha256) if meta.ruleset else None
        return Pulled(meta, path, native, trusted is not None)
    tried = ", ".join(candidates) or "none runnable here"
    raise ArtifactMissing(f"no artifact of pattern {pattern_id!r} for this host (tried: {tried}); pre-warm it "
                          "with `farm prewarm`")


__all__ = ["Pulled", "preference", "pull"]
