"""The cluster's wire contract: what a coordinator sends a worker (CompileMessage) and what the worker's
task returns (TaskResult), as JSON-safe dicts with a version, built and read only here.

A module every message for a target carries unchanged (the runtime: about 80% of a one-rule message,
tests/test_messages.py) travels by content key: the coordinator shares its text in Redis once
(keys.module), the message names it, and a worker fetches it once and keeps it (verified against the key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from farm.errors import WireFormatError

WIRE_VERSION = 1
SHARED_MODULES = frozenset({"runtime"})  # module names whose text is the same in every message of a target


class Status(StrEnum):
    """How a compile request ended (equal to its wire string)."""

    CACHED = "cached"
    COMPILED = "compiled"
    FAILED = "failed"
    DEAD_LETTER = "dead-letter"


def content_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class WirePart:
    """One module to link, in order: its text inline, or the content key of a shared module's text."""

    name: str
    text: str = ""
    shared_key: str = ""

    @classmethod
    def of(cls, name: str, text: str) -> WirePart:
        return cls(name, shared_key=content_key(text)) if name in SHARED_MODULES else cls(name, text=text)


@dataclass(frozen=True)
class CompileMessage:
    pattern_id: str
    target: str
    opt_level: int
    key: str  # the artifact key the coordinator computed; the worker must arrive at the same
    versions: dict[str, str]  # the toolchain the key was computed with
    parts: tuple[WirePart, ...]
    ruleset_json: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "pattern_id": self.pattern_id, "target": self.target,
                "opt_level": self.opt_level, "key": self.key, "versions": self.versions,
                "parts": [[p.name, p.text, p.shared_key] for p in self.parts], "ruleset": self.ruleset_json}

    @classmethod
    def from_wire(cls, data: object) -> CompileMessage:
        wire = _versioned(data, "compile message")
        try:
            parts = tuple(WirePart(str(name), str(text), str(shared)) for name, text, shared in wire["parts"])
            versions = {str(k): str(v) for k, v in dict(wire["versions"]).items()}
            return cls(str(wire["pattern_id"]), str(wire["target"]), _integer(wire["opt_level"]),
                       str(wire["key"]), versions, parts, str(wire.get("ruleset", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireFormatError(f"malformed compile message: {type(exc).__name__}: {exc}") from None


def shared_texts(parts: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The texts of the shared modules among (name, text) parts, by content key."""
    return {content_key(text): text for name, text in parts if name in SHARED_MODULES}


@dataclass(frozen=True)
class TaskResult:
    status: Status
    key: str
    error: str = ""
    sha256: str = ""
    seconds: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "status": self.status.value, "key": self.key, "error": self.error,
                "sha256": self.sha256, "seconds": self.seconds}

    @classmethod
    def from_wire(cls, data: object) -> TaskResult:
        """A worker's result; another version or a malformed one is a failure that says what came back."""
        try:
            wire = _versioned(data, "task result")
        except WireFormatError as exc:
            return cls(Status.FAILED, "", str(exc))
        try:
            return cls(Status(wire["status"]), str(wire.get("key", "")), str(wire.get("error", "")),
                       str(wire.get("sha256", "")), float(wire.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            return cls(Status.FAILED, str(wire.get("key", "")), f"malformed task result: {type(exc).__name__}: {exc}")

    @classmethod
    def failure(cls, value: object) -> TaskResult:
        """What a task that raised left as its result."""
        return cls(Status.FAILED, "", f"{type(value).__name__}: {value}")


def _versioned(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise WireFormatError(f"a {what} must be a JSON object, not {type(data).__name__}")
    if data.get("v") != WIRE_VERSION:
        raise WireFormatError(f"{what} of wire version {data.get('v')!r}; this farm speaks version {WIRE_VERSION}"
                              " (coordinators and workers of different releases)")
    return data


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


__all__ = ["SHARED_MODULES", "WIRE_VERSION", "CompileMessage", "Status", "TaskResult", "WirePart", "content_key",
           "shared_texts"]
