"""One rooted hierarchy of farm's errors: one type per failure cause, data carried as attributes."""

from __future__ import annotations

from dataclasses import dataclass


class FarmError(Exception):
    """Root of every error farm raises on purpose."""


@dataclass(frozen=True)
class SourceLocation:
    """Where something is in an input: file, line and column (from 1)."""

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


class NotUtf8Text(ParseError):
    """A rule, term or config file holds bytes that are not UTF-8; the location names the first bad byte."""


class InputFileError(FarmError):
    """A user's input file (rules, terms, config) cannot be taken as one; the message names the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class InputUnreadable(InputFileError):
    """The input file is missing or cannot be opened."""


class NotARegularFile(InputFileError):
    """The input is a directory, FIFO, device or socket: it could block or never end, so it is refused."""


class InputTooLarge(InputFileError):
    """The input file is larger than its kind's size cap (overridable by an environment variable)."""

    def __init__(self, path: str, message: str, limit: int, variable: str) -> None:
        super().__init__(path, message)
        self.limit = limit
        self.variable = variable


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


class ConditionsTooDeep(NonTermination):
    """Conditions nest (a condition's normalisation needs another condition's, ...) past MAX_CONDITION_DEPTH."""


class CallsTooDeep(NonTermination):
    """Calls nest (a right-hand side calls an operator whose rule calls another, ...) past MAX_CALL_DEPTH, or
    past what the native stack holds."""


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
    """A toolchain stage's tool is not installed, or its override (`variable`, e.g. FARM_LLC) names no executable."""

    def __init__(self, tool: str, package: str, variable: str, override: str | None = None) -> None:
        install = f"`apt-get install {package}`"
        if override is None:
            message = f"LLVM tool {tool!r} was not found on PATH; install it with {install} or point {variable} at it"
        else:
            message = (f"LLVM tool {tool!r} was not found: {variable}={override} is not an executable; point "
                       f"{variable} at the tool, or unset it and install the tool with {install}")
        super().__init__(message)
        self.tool = tool
        self.package = package
        self.variable = variable
        self.override = override


class StageFailed(ToolchainError):
    """A toolchain stage exited non-zero; carries that tool's stderr."""

    def __init__(self, stage: str, returncode: int, stderr: str) -> None:
        super().__init__(f"{stage} failed (exit {returncode}):\n{stderr.strip()}")
        self.stage = stage
        self.returncode = returncode
        self.stderr = stderr


class CompileWorkerLost(StageFailed):
    """A worker process compiling chunks in parallel (farm/compiler/parallel.py) could not start or exited: its
    share is compiled in the calling process instead."""

    def __init__(self, detail: str, returncode: int = 1) -> None:
        super().__init__("compile worker", returncode, detail)


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


class UnsafeLibrary(PolicyViolation):
    """The dynamic loader would make a library do more than farm's own libraries do (load another library,
    run code, bind a symbol outside the allow-list); carries every reason found."""

    def __init__(self, library: str, reasons: list[str]) -> None:
        super().__init__(f"{library} is refused: " + "; ".join(reasons))
        self.library = library
        self.reasons = reasons


class MalformedLibrary(PolicyViolation):
    """A library the loader could not map or read as its headers describe (truncated, overlapping, unmapped)."""

    def __init__(self, library: str, detail: str) -> None:
        super().__init__(f"{library} is refused as malformed: {detail}")
        self.library = library
        self.detail = detail


class WorkDirError(FarmError):
    """The work or cache directory cannot be written (permissions, disk full)."""


class ArtifactError(FarmError):
    """Base of artifact store failures."""


class ArtifactMissing(ArtifactError):
    pass


class IntegrityError(ArtifactError):
    """An artifact's bytes do not match its recorded sha256: refused before dlopen."""


class ArtifactFormatMismatch(ArtifactError):
    """Stored metadata in another format than this farm's (older, newer, or from before formats were numbered):
    the stores and indexes read it as a cache miss, so the artifact is rebuilt rather than misread."""

    def __init__(self, key: str, found: object, expected: int) -> None:
        shown = "none" if found is None else repr(found)
        super().__init__(f"the metadata of artifact {key[:12] or '?'} is in format {shown}; this farm reads "
                         f"format {expected}")
        self.key = key
        self.found = found
        self.expected = expected


class InvalidArtifactKey(ArtifactError, ValueError):
    """A key (from the index, which others may write, or a caller) is not sha256 hex: it never reaches a path or
    an object name."""


class ReadOnlyShared(ArtifactError):
    """This node reads the shared cache and never writes it (FARM_SHARED_MODE=read-only)."""


class IncompatibleArtifact(ArtifactError):
    """The artifact was built for a CPU or ABI this host cannot run."""


class LoadError(FarmError):
    """dlopen or symbol lookup failed."""


class InvalidPatternId(FarmError):
    """A pattern ID is empty, too long or contains a NUL byte."""


class ConfigError(FarmError):
    """A configuration file or value is malformed."""


class InvalidSetting(ConfigError):
    """One configuration variable holds a value outside what it allows."""

    def __init__(self, name: str, value: str, expected: str, origin: str) -> None:
        super().__init__(f"{name}={value!r} {origin}: expected {expected}")
        self.name = name
        self.value = value
        self.expected = expected
        self.origin = origin


class InvalidArgument(FarmError, ValueError):
    """An argument of farm's Python API is outside its allowed range (a ValueError too, for old callers)."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        super().__init__(f"{name}={value!r}: expected {expected}")
        self.name = name
        self.value = value
        self.expected = expected


class MissingExtra(FarmError):
    """A feature needs an optional dependency group (a pip extra) that is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"this needs the Python module {module!r} of farm's {extra!r} extra, which is not "
                         f"installed; install it with `pip install 'farm-rewrite[{extra}]'`")
        self.module = module
        self.extra = extra


class OutputPathError(FarmError):
    """A user-named output file cannot be written where asked (e.g. its directory does not exist)."""


class ClusterError(FarmError):
    """Base of the cluster deployment's failures."""


class BackendUnavailable(ClusterError):
    """Redis, the broker or the S3 server cannot be reached."""


class BackendRefusedWrite(BackendUnavailable):
    """Redis refused a write to this node's user (an ACL that grants reads only): unavailable for writing. A count
    is then lost, as in an outage, never the hit it counts; a node meant to read only says FARM_SHARED_MODE=read-only
    and attempts no write at all."""


class WireFormatError(ClusterError):
    """A compile message or task result of another wire version, or malformed."""


class SharedModuleMissing(ClusterError):
    """A compile message names a shared module (by content key) that Redis no longer holds."""


class NoWorkerForTarget(ClusterError):
    """No worker has registered a toolchain for this target's queue."""


class CompileTimeout(ClusterError):
    """A cluster compilation did not finish in time."""


class RemoteCompileFailed(ClusterError):
    """A worker reported a failed compilation; carries its message."""


class KeyFileError(ConfigError):
    """A signing or verify key file is missing, unreadable, open to other users or not an Ed25519 key."""

    def __init__(self, variable: str, path: str, problem: str) -> None:
        super().__init__(f"{variable}={path}: {problem}")
        self.variable = variable
        self.path = path
        self.problem = problem


class KeyFileExists(FarmError):
    """`farm keygen` would overwrite a key file."""


class SignatureError(IntegrityError):
    """An artifact's signature is missing, from an untrusted key, or wrong: refused before dlopen."""


class UnsignedArtifact(SignatureError):
    """A node that trusts only signed artifacts was handed one without a signature."""


class UntrustedSigner(SignatureError):
    """The artifact is signed by a key this node does not trust; carries that key's id."""

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class BadSignature(SignatureError):
    """The signature does not match the signed fields of the metadata (or is malformed)."""


class LegacySignature(SignatureError):
    """An HMAC signature from before farm signed with Ed25519: no node accepts shared-secret signatures."""


class ServerError(FarmError):
    """`farm server` could not start, stop or reach its server."""
