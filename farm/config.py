"""Configuration from environment variables; unset means the embedded default (nothing to start)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "farm"


@dataclass
class FarmConfig:
    cache_dir: Path = field(default_factory=_default_cache_dir)
    work_dir: Path | None = None  # temp build dirs; defaults to cache_dir / "work"
    target: str = "native"
    opt_level: int = 2
    stage_timeout: float = 120.0
    workers: int = 0  # process pool size for batch compiles; 0 = os.cpu_count()

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        self.work_dir = Path(self.work_dir) if self.work_dir is not None else None

    @property
    def build_dir(self) -> Path:
        return self.work_dir or self.cache_dir / "work"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FarmConfig:
        env = dict(os.environ if env is None else env)
        cfg = cls()
        if env.get("FARM_CACHE_DIR"):
            cfg.cache_dir = Path(env["FARM_CACHE_DIR"])
        if env.get("FARM_WORK_DIR"):
            cfg.work_dir = Path(env["FARM_WORK_DIR"])
        cfg.target = env.get("FARM_TARGET", cfg.target)
        cfg.opt_level = int(env.get("FARM_OPT_LEVEL", cfg.opt_level))
        cfg.stage_timeout = float(env.get("FARM_STAGE_TIMEOUT", cfg.stage_timeout))
        cfg.workers = int(env.get("FARM_WORKERS", cfg.workers))
        return cfg
