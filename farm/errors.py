"""One rooted hierarchy of farm's errors: one type per failure cause, data carried as attributes."""

from __future__ import annotations

from dataclasses import dataclass


class FarmError(Exception):
    """Root of every error farm raises on purpose."""


@dataclass(frozen=True)
class SourceLocation:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class ParseError(FarmError):
    """A rule or term file does not follow the grammar."""

    def __init__(self, location: SourceLocation, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.detail = message


class RuleError(FarmError):
    """A rule is well-formed text but not a valid rewrite rule."""

    def __init__(self, rule: str, message: str, location: SourceLocation | None = None) -> None:
        where = f"{location}: " if location else ""
        super().__init__(f"{where}rule {rule!r}: {message}")
        self.rule = rule
        self.location = location
        self.detail = message


class UnboundVariableError(RuleError):
    """A target or guard uses a variable the source pattern does not bind."""


class ArityError(RuleError):
    """One operator is used with two different arities."""


class UnknownOperatorError(FarmError):
    """A term or rule names an operator that does not exist where it is used."""


class TermError(FarmError):
    """A term is malformed (arity clash with the ruleset, bad literal, ...)."""


class RewriteError(FarmError):
    """Normalisation could not finish."""


class NonTermination(RewriteError):
    """Rewriting does not reach a normal form."""

    def __init__(self, message: str, steps: int) -> None:
        super().__init__(message)
        self.steps = steps


class FuelExhausted(NonTermination):
    """More rewrite steps than the fuel budget allows."""


class RewriteCycle(NonTermination):
    """A term rewrites (through other terms) back to itself: it has no normal form."""


class ArenaOutOfMemory(RewriteError):
    """Rewriting needs more memory than the cap (FARM_MAX_MEMORY) allows, or than malloc gives."""

    def __init__(self, message: str, cap: int = 0) -> None:
        super().__init__(message)
        self.cap = cap  # bytes; 0 when no cap was set


class CodegenError(FarmError):
    """A ruleset cannot be expressed in the requested code generation target."""


class UnsupportedTarget(FarmError):
    """The target name is not in the registry, or the host cannot run it."""


class ToolchainError(FarmError):
    """Base of the staged toolchain's failures."""


class ToolNotFound(ToolchainError):
    def __init__(self, tool: str, package: str) -> None:
        super().__init__(
            f"LLVM tool {tool!r} was not found on PATH; install it with "
            f"`apt-get install {package}` or point FARM_{tool.upper().replace('.', '_').replace('-', '_')} at it"
        )
        self.tool = tool
        self.package = package


class StageFailed(ToolchainError):
    """A toolchain stage exited non-zero; carries that tool's stderr."""

    def __init__(self, stage: str, returncode: int, stderr: str) -> None:
        super().__init__(f"{stage} failed (exit {returncode}):\n{stderr.strip()}")
        self.stage = stage
        self.returncode = returncode
        self.stderr = stderr


class StageTimeout(ToolchainError):
    def __init__(self, stage: str, seconds: float) -> None:
        super().__init__(f"{stage} did not finish within {seconds:g} s")
        self.stage = stage
        self.seconds = seconds


class ToolchainMismatch(ToolchainError):
    """A worker's tool versions differ from those a request's cache key was computed with."""


class InvalidIR(ToolchainError):
    """IR handed to compile_llvm_ir is empty or has no function to export."""


class PolicyViolation(InvalidIR):
    """IR or a library would import a function outside the allow-list, or run code when loaded."""


class WorkDirError(FarmError):
    """The work or cache directory cannot be written (permissions, disk full)."""


class ArtifactError(FarmError):
    """Base of artifact store failures."""


class ArtifactMissing(ArtifactError):
    pass


class IntegrityError(ArtifactError):
    """An artifact's bytes do not match its recorded sha256: refused before dlopen."""


class IncompatibleArtifact(ArtifactError):
    """The artifact was built for a CPU or ABI this host cannot run."""


class LoadError(FarmError):
    """dlopen or symbol lookup failed."""


class InvalidPatternId(FarmError):
    """A pattern ID is empty, too long or contains a NUL byte."""


class ConfigError(FarmError):
    """A configuration file or value is malformed."""


class ClusterError(FarmError):
    """Base of the cluster deployment's failures."""


class BackendUnavailable(ClusterError):
    """Redis, the broker or the S3 server cannot be reached."""


class NoWorkerForTarget(ClusterError):
    """No worker has registered a toolchain for this target's queue."""


class CompileTimeout(ClusterError):
    """A cluster compilation did not finish in time."""


class RemoteCompileFailed(ClusterError):
    """A worker reported a failed compilation; carries its message."""


class SignatureError(IntegrityError):
    """An artifact's HMAC signature is missing or wrong: refused before dlopen."""
