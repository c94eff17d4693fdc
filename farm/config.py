"""Configuration from environment variables; unset means the embedded default (nothing to start).

Every value goes through one reader (SettingsReader) with a parser per variable: a parser takes the text and
returns the value, or raises ValueError whose message says what is expected (see `integer`, `choice`, ...;
any callable of that shape will do, e.g. `str`). A bad value is an InvalidSetting naming the variable, the
value, where it was set and what is allowed, so adding a variable is one line in `FarmConfig.from_env`.
"""

from __future__ import annotations

import math
import os
import re
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from farm import locations
from farm.errors import ConfigError, InvalidSetting
from farm.targets import target_names

T = TypeVar("T")
COMPILE_PATHS = ("staged", "inprocess")
# read-only: a node that only pulls needs read access to S3 and writes nothing to Redis or S3 (the hot-set count
# of `farm pull --rewrite` excepted), as sccache's SCCACHE_S3_RW_MODE=READ_ONLY
SHARED_MODES = ("read-write", "read-only")


def _default_cache_dir() -> Path:
    return Path(locations.default_cache_dir(os.environ))


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2, v1


def _machine_memory() -> int:
    """Physical RAM, or the cgroup's memory limit when a container has one below it ("max" in v2 and a
    huge number in v1 mean none)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for name in _CGROUP_LIMITS:
        try:
            limit = Path(name).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            memory = min(memory, int(limit))
    return memory


@cache
def default_max_memory() -> int:
    """A quarter of the machine's memory (as the JVM's default heap cap): one runaway input stops well before
    it takes the machine, while leaving room for the Python-side copy of the results and for other
    processes. Under an address-space limit (RLIMIT_AS), at most half of it: the address space also holds
    the interpreter, its libraries and the exported results, and the cap must be reached before malloc fails."""
    cap = _machine_memory() // 4
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return cap if soft == resource.RLIM_INFINITY else min(cap, soft // 2)


# Patterns are compiled on first use (re's cache): most processes parse no size, duration or bucket name.
_SIZE = r"(\d+)\s*([KMGT]?)(?:I?B)?"
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: str) -> int:
    """Bytes from `67108864`, `512M`, `4G`, `4GiB` (binary units); 0 means no cap."""
    match = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE)
    if match is None:
        raise ValueError("a size in bytes, optionally with a K, M, G or T suffix (e.g. 512M, 4G)")
    return int(match[1]) * _SIZE_UNITS[match[2].upper()]


_DURATION = r"(\d+(?:\.\d+)?)\s*([smhdw]?)"
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """Seconds from `3600`, `90s`, `30m`, `12h`, `7d`, `2w`."""
    match = re.fullmatch(_DURATION, text.strip(), re.IGNORECASE)
    if match is None:
        raise ValueError("a duration: a number of seconds, or with an s, m, h, d or w suffix (e.g. 12h, 7d)")
    return float(match[1]) * _DURATION_UNITS[match[2].lower()]


DEFAULT_CACHE_SIZE = 10 << 30


def max_memory_from_env() -> int:
    """FARM_MAX_MEMORY (environment over FARM_CONFIG) or its default: the cap an engine takes when its caller
    gives none (an Engine passes its own config's)."""
    return SettingsReader(os.environ)("FARM_MAX_MEMORY", None, size) or default_max_memory()


@dataclass
class FarmConfig:
    """farm's settings, each with its embedded default (`from_env` reads the environment and config file)."""

    cache_dir: Path = field(default_factory=_default_cache_dir)
    work_dir: Path | None = None  # temp build dirs; defaults to cache_dir / "work"
    target: str = "native"
    opt_level: int = 2
    stage_timeout: float = 120.0
    stage_memory_mb: int = 4096  # address-space cap of each toolchain stage
    # bytes a rewrite (native arena or interpreter) may hold before ArenaOutOfMemory; 0 = no cap
    max_memory: int = field(default_factory=default_max_memory)
    # bytes the local cache (libraries and compiled objects) may hold; past it, the least recently used are evicted
    # after each store (farm/cache/gc.py); 0 = no limit
    cache_size: int = DEFAULT_CACHE_SIZE
    workers: int = 0  # process pool size for batch compiles; 0 = os.cpu_count()
    # "staged" (llvm-as, opt, llc, llvm-mc) or "inprocess" (llvmlite); both link with ld.lld
    compile_path: str = "staged"
    # a ruleset with no library runs at once from memory (-O0, no files) while its library is built in the
    # background (farm/cache/tiered.py); off: the first call waits for the library
    tiered: bool = True
    # cluster deployment: each one unset means the embedded default for that concern
    redis_url: str | None = None  # shared cache index, locks and counters
    broker_url: str | None = None  # Celery broker; defaults to redis_url
    result_url: str | None = None  # Celery result backend; defaults to redis_url (see `result_backend`)
    s3_endpoint: str | None = None  # host:port of an S3-compatible server
    s3_bucket: str = "farm-artifacts"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    shared_mode: str = "read-write"  # SHARED_MODES
    # Ed25519 key files (farm/cache/signing.py): a builder's private key signs what it builds; nodes hold only
    # public keys, and with any key configured load only artifacts signed by a trusted one
    signing_key: Path | None = None
    verify_keys: tuple[Path, ...] = ()
    task_time_limit: float = 600.0
    max_deliveries: int = 3  # a compile message redelivered more often than this is dead-lettered
    outage_grace: float = 120.0  # seconds a coordinator or worker rides out an unreachable Redis or S3
    # Unacknowledged messages of a worker that died whole are redelivered after this; None = 6x time limit
    visibility_timeout: float | None = None

    def __post_init__(self) -> None:
        # absolute: the tools and the background build run in directories of their own
        self.cache_dir = Path(self.cache_dir).absolute()
        self.work_dir = Path(self.work_dir).absolute() if self.work_dir is not None else None
        self.signing_key = Path(self.signing_key) if self.signing_key else None
        self.verify_keys = tuple(Path(p) for p in self.verify_keys)

    @property
    def build_dir(self) -> Path:
        return self.work_dir or self.cache_dir / "work"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FarmConfig:
        """Environment variables, over the config file (TOML: FARM_CONFIG, else ~/.config/farm/config.toml when
        present). Every value is checked here: a bad one is an InvalidSetting naming the variable, the value, where
        it came from and what is allowed. An empty value means unset."""
        return cls.explained(env)[0]

    @classmethod
    def explained(cls, env: Mapping[str, str] | None = None) -> tuple[FarmConfig, list[Setting], Path | None]:
        """The configuration, with every setting's value and origin (`farm config`), and the config file read."""
        read = SettingsReader(os.environ if env is None else env)
        cfg = cls._read(read)
        read.check_known()
        return cfg, read.read, read.file

    @classmethod
    def _read(cls, read: SettingsReader) -> FarmConfig:
        cfg = cls()
        cfg.cache_dir = read("FARM_CACHE_DIR", cfg.cache_dir, directory)
        cfg.work_dir = read("FARM_WORK_DIR", cfg.work_dir, directory)
        cfg.target = read("FARM_TARGET", cfg.target, choice(*target_names()))
        cfg.opt_level = read("FARM_OPT_LEVEL", cfg.opt_level, integer(0, 3))
        cfg.stage_timeout = read("FARM_STAGE_TIMEOUT", cfg.stage_timeout, seconds(above=0))
        cfg.stage_memory_mb = read("FARM_STAGE_MEMORY_MB", cfg.stage_memory_mb, integer(1))
        cfg.workers = read("FARM_WORKERS", cfg.workers, integer(0))
        cfg.max_memory = read("FARM_MAX_MEMORY", cfg.max_memory, size)
        cfg.cache_size = read("FARM_CACHE_SIZE", cfg.cache_size, size)
        cfg.compile_path = read("FARM_COMPILE_PATH", cfg.compile_path, choice(*COMPILE_PATHS))
        cfg.tiered = read("FARM_TIERED", cfg.tiered, flag)
        cfg.redis_url = read("FARM_REDIS_URL", cfg.redis_url, url("redis", "rediss", "unix"))
        cfg.broker_url = read("FARM_BROKER_URL", cfg.redis_url, url())
        cfg.result_url = read("FARM_RESULT_URL", cfg.result_url, url("redis", "rediss", "unix"))
        cfg.s3_endpoint = read("FARM_S3_ENDPOINT", cfg.s3_endpoint, host_port)
        cfg.s3_bucket = read("FARM_S3_BUCKET", cfg.s3_bucket, S3_BUCKET)
        cfg.s3_access_key = read("FARM_S3_ACCESS_KEY", cfg.s3_access_key, str)
        cfg.s3_secret_key = read("FARM_S3_SECRET_KEY", cfg.s3_secret_key, str)
        cfg.s3_secure = read("FARM_S3_SECURE", cfg.s3_secure, flag)
        cfg.s3_region = read("FARM_S3_REGION", cfg.s3_region, S3_REGION)
        cfg.shared_mode = read("FARM_SHARED_MODE", cfg.shared_mode, choice(*SHARED_MODES))
        cfg.signing_key = read("FARM_SIGNING_KEY", cfg.signing_key, Path)
        cfg.verify_keys = read("FARM_VERIFY_KEY", cfg.verify_keys, key_files)
        cfg.task_time_limit = read("FARM_TASK_TIME_LIMIT", cfg.task_time_limit, seconds(above=0))
        cfg.max_deliveries = read("FARM_MAX_DELIVERIES", cfg.max_deliveries, integer(1))
        cfg.outage_grace = read("FARM_OUTAGE_GRACE", cfg.outage_grace, seconds(at_least=0))
        cfg.visibility_timeout = read("FARM_VISIBILITY_TIMEOUT", cfg.visibility_timeout, seconds(above=0))
        return cfg

    @property
    def result_backend(self) -> str | None:
        """Where Celery keeps task results: FARM_RESULT_URL, else the index's Redis. deploy/ gives them a database
        of their own (1), apart from the index and the broker's queues."""
        return self.result_url or self.redis_url

    @property
    def read_only(self) -> bool:
        return self.shared_mode == "read-only"

    @property
    def cluster(self) -> bool:
        return bool(self.redis_url and self.broker_url and self.s3_endpoint)


def default_config_file(env: Mapping[str, str]) -> Path | None:
    """farm.locations.default_config_file, as a Path."""
    path = locations.default_config_file(env)
    return None if path is None else Path(path)


def config_file_of(env: Mapping[str, str]) -> Path | None:
    """farm.locations.config_file_of, as a Path: FARM_CONFIG if set (empty: none), else the default location when a
    file is there."""
    path = locations.config_file_of(env)
    return None if path is None else Path(path)


def read_config_file(path: Path) -> dict[str, tuple[str, int]]:
    """A TOML file of settings, `name = value` at the top level: `opt_level = 1` or `FARM_OPT_LEVEL = 1`, strings
    in quotes, `#` comments anywhere (after a value too). Each value as the text its parser reads, with the number
    of the line that sets it. Errors name the file and line."""
    import tomllib

    from farm.errors import InputFileError, NotUtf8Text
    from farm.inputs import CONFIG, read_input_text

    try:
        text = read_input_text(path, CONFIG)
    except (InputFileError, NotUtf8Text) as exc:  # a config problem to whoever catches ConfigError
        raise ConfigError(f"cannot read the config file: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        reason = str(exc).split(" (at line")[0]
        raise ConfigError(f"{path}:{where[1] if where else '?'}: {reason}: expected TOML, `name = value` with strings "
                          'in quotes (e.g. cache_dir = "/srv/farm")') from None
    lines = text.splitlines()
    settings: dict[str, tuple[str, int]] = {}
    for key, value in document.items():
        line = _line_of(lines, key)
        settings[locations.setting_name(key)] = (_setting_text(path, key, value, line), line)
    return settings


def _line_of(lines: list[str], key: str) -> int:
    pattern = re.compile(rf"""^\s*(\[+\s*)?["']?{re.escape(key)}["']?\s*[=\]]""")  # `key =` or a `[key]` table
    return next((n for n, line in enumerate(lines, 1) if pattern.match(line)), 0)


def _setting_text(path: Path, key: str, value: object, line: int) -> str:
    """A TOML value as the text the setting's parser reads: a list (of key files) joins with commas."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    raise ConfigError(f"{path}:{line}: {key} is a {type(value).__name__}; expected a string, a number, true/false "
                      "or a list of strings (settings are top-level `name = value` pairs)")


@dataclass(frozen=True)
class Setting:
    """One setting as `farm config` shows it: its value (secrets hidden) and where it came from."""

    name: str
    value: str
    origin: str  # "environment", "<file>:<line>" or "default"


class SettingsReader:
    """Reads FARM_* settings from the environment over the config file, checking each with its parser; it keeps
    what it read, and where from, for `farm config`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.values = dict(env)
        self.origins = {name: "in the environment" for name in self.values}
        self.read: list[Setting] = []
        self.file = config_file_of(env)
        self.from_file: dict[str, int] = {}
        if self.file is not None:
            for name, (value, line) in read_config_file(self.file).items():
                self.from_file[name] = line
                if name not in self.values:
                    self.values[name], self.origins[name] = value, f"at {self.file}:{line}"

    def __call__(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        """The parsed value of `name`, or `default` when it is unset or empty."""
        text = self.values.get(name, "").strip()
        if not text:
            self.read.append(Setting(name, "" if default is None else _shown(name, str(default)), "default"))
            return default
        try:
            value = parse(text)
        except ValueError as exc:
            raise InvalidSetting(name, _shown(name, text), str(exc), self.origins[name]) from None
        self.read.append(Setting(name, _shown(name, text), self.origins[name].removeprefix("in the ")
                                 .removeprefix("at ")))
        return value

    def check_known(self) -> None:
        """A setting the file names that nothing reads is a typo: say which line."""
        known = {setting.name for setting in self.read}
        for name, line in self.from_file.items():
            if name not in known:
                raise ConfigError(f"{self.file}:{line}: unknown setting {name}; `farm config` lists the settings")


def _shown(name: str, text: str) -> str:
    """The value as an error message may print it: secrets hidden, a URL's password masked."""
    if "SECRET" in name or name.endswith("_KEY"):
        return "<hidden>"
    return masked(text)


def masked(url: str) -> str:
    """A URL as farm prints it anywhere (titles, messages, logs): its password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


# Parsers: each returns the value or raises ValueError("<what is expected>").

def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(expected) from None
        if value < low or (high is not None and value > high):
            raise ValueError(expected)
        return value

    return parse


def seconds(above: float | None = None, at_least: float | None = None) -> Callable[[str], float]:
    """A finite number of seconds, either > `above` or >= `at_least`."""
    expected = f"a number of seconds > {above:g}" if above is not None else f"a number of seconds >= {at_least:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(expected) from None
        too_small = (above is not None and value <= above) or (at_least is not None and value < at_least)
        if not math.isfinite(value) or too_small:
            raise ValueError(expected)
        return value

    return parse


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
        return text

    return parse


def matching(pattern: str, description: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not re.fullmatch(pattern, text):
            raise ValueError(description)
        return text

    return parse


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def flag(text: str) -> bool:
    try:
        return _FLAGS[text.lower()]
    except KeyError:
        raise ValueError(f"one of {', '.join(_FLAGS)}") from None


def directory(text: str) -> Path:
    """A directory path, made absolute (the tools and the background build run in directories of their own); it need
    not exist yet (farm creates it), but must not be something else."""
    path = Path(text).absolute()
    if "\0" in text:
        raise ValueError("a directory path (without a NUL byte)")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"a directory; {existing} exists and is not one")
    return path


def url(*schemes: str) -> Callable[[str], str]:
    expected = f"a URL {' or '.join(f'{s}://...' for s in schemes)}" if schemes else "a URL scheme://..."

    def parse(text: str) -> str:
        parts = urlsplit(text)
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise ValueError(f"{expected} with a port from 1 to 65535") from None
        if "://" not in text or not parts.scheme or (schemes and parts.scheme not in schemes):
            raise ValueError(expected)
        return text

    return parse


def host_port(text: str) -> str:
    """host or host:port, with no scheme or path (what an S3 client takes as its endpoint)."""
    expected = "host:port with no scheme or path, e.g. minio:9000"
    parts = urlsplit(f"//{text}")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(expected) from None
    if "://" in text or not parts.hostname or parts.path or parts.query or parts.fragment or "@" in text:
        raise ValueError(expected)
    return text


S3_BUCKET = matching(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name: 3-63 of a-z 0-9 . -, "
                     "starting and ending with a letter or digit")
S3_REGION = matching(r"[A-Za-z0-9._-]+", "a region name such as us-east-1")


def key_files(text: str) -> tuple[Path, ...]:
    """One or more key file paths, comma-separated (several public keys are trusted during a rotation)."""
    paths = tuple(Path(part.strip()) for part in text.split(",") if part.strip())
    if not paths:
        raise ValueError("one or more key file paths, comma-separated")
    return paths
