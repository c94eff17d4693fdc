"""Configuration from environment variables; unset means the embedded default (nothing to start)."""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "farm"


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


_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, variable: str) -> int:
    """Bytes from `67108864`, `512M`, `4G`, `4GiB` (binary units); 0 means no cap."""
    from farm.errors import ConfigError

    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{variable}={text!r}: expected a size in bytes, optionally with a K, M, G or T suffix "
                          "(e.g. 512M, 4G)")
    return int(match[1]) * _SIZE_UNITS[match[2].upper()]


@dataclass
class FarmConfig:
    cache_dir: Path = field(default_factory=_default_cache_dir)
    work_dir: Path | None = None  # temp build dirs; defaults to cache_dir / "work"
    target: str = "native"
    opt_level: int = 2
    stage_timeout: float = 120.0
    stage_memory_mb: int = 4096  # address-space cap of each toolchain stage
    # bytes a rewrite (native arena or interpreter) may hold before ArenaOutOfMemory; 0 = no cap
    max_memory: int = field(default_factory=default_max_memory)
    workers: int = 0  # process pool size for batch compiles; 0 = os.cpu_count()
    # "staged" (llvm-as, opt, llc, llvm-mc) or "inprocess" (llvmlite); both link with ld.lld
    compile_path: str = "staged"
    # cluster deployment: each one unset means the embedded default for that concern
    redis_url: str | None = None  # shared cache index, locks and counters
    broker_url: str | None = None  # Celery broker; defaults to redis_url
    s3_endpoint: str | None = None  # host:port of an S3-compatible server (MinIO)
    s3_bucket: str = "farm-artifacts"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    signing_key: str | None = None  # HMAC key: artifacts are signed at build and checked before dlopen
    task_time_limit: float = 600.0
    max_deliveries: int = 3  # a compile message redelivered more often than this is dead-lettered
    outage_grace: float = 120.0  # seconds a coordinator or worker rides out an unreachable Redis or S3
    # Unacknowledged messages of a worker that died whole are redelivered after this; None = 6x time limit
    visibility_timeout: float | None = None

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        self.work_dir = Path(self.work_dir) if self.work_dir is not None else None

    @property
    def build_dir(self) -> Path:
        return self.work_dir or self.cache_dir / "work"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FarmConfig:
        """Environment variables, over an optional config file named by FARM_CONFIG (KEY=value lines)."""
        env = dict(os.environ if env is None else env)
        if env.get("FARM_CONFIG"):
            env = {**read_config_file(Path(env["FARM_CONFIG"])), **env}
        cfg = cls()
        if env.get("FARM_CACHE_DIR"):
            cfg.cache_dir = Path(env["FARM_CACHE_DIR"])
        if env.get("FARM_WORK_DIR"):
            cfg.work_dir = Path(env["FARM_WORK_DIR"])
        cfg.target = env.get("FARM_TARGET", cfg.target)
        cfg.opt_level = int(env.get("FARM_OPT_LEVEL", cfg.opt_level))
        cfg.stage_timeout = float(env.get("FARM_STAGE_TIMEOUT", cfg.stage_timeout))
        cfg.stage_memory_mb = int(env.get("FARM_STAGE_MEMORY_MB", cfg.stage_memory_mb))
        cfg.workers = int(env.get("FARM_WORKERS", cfg.workers))
        if env.get("FARM_MAX_MEMORY"):
            cfg.max_memory = parse_size(env["FARM_MAX_MEMORY"], "FARM_MAX_MEMORY")
        cfg.compile_path = env.get("FARM_COMPILE_PATH", cfg.compile_path)
        cfg.redis_url = env.get("FARM_REDIS_URL") or None
        cfg.broker_url = env.get("FARM_BROKER_URL") or cfg.redis_url
        cfg.s3_endpoint = env.get("FARM_S3_ENDPOINT") or None
        cfg.s3_bucket = env.get("FARM_S3_BUCKET", cfg.s3_bucket)
        cfg.s3_access_key = env.get("FARM_S3_ACCESS_KEY") or None
        cfg.s3_secret_key = env.get("FARM_S3_SECRET_KEY") or None
        cfg.s3_secure = env.get("FARM_S3_SECURE", "").lower() in ("1", "true", "yes")
        cfg.s3_region = env.get("FARM_S3_REGION", cfg.s3_region)
        cfg.signing_key = env.get("FARM_SIGNING_KEY") or None
        cfg.task_time_limit = float(env.get("FARM_TASK_TIME_LIMIT", cfg.task_time_limit))
        cfg.max_deliveries = int(env.get("FARM_MAX_DELIVERIES", cfg.max_deliveries))
        cfg.outage_grace = float(env.get("FARM_OUTAGE_GRACE", cfg.outage_grace))
        if env.get("FARM_VISIBILITY_TIMEOUT"):
            cfg.visibility_timeout = float(env["FARM_VISIBILITY_TIMEOUT"])
        return cfg

    @property
    def cluster(self) -> bool:
        return bool(self.redis_url and self.broker_url and self.s3_endpoint)


def read_config_file(path: Path) -> dict[str, str]:
    """`FARM_NAME=value` lines; `#` comments. Errors name the file and line."""
    from farm.errors import ConfigError

    values: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip().startswith("FARM_"):
            raise ConfigError(f"{path}:{number}: expected FARM_NAME=value, found {raw!r}")
        values[name.strip()] = value.strip().strip('"')
    return values
