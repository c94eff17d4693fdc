from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from farm.config import FarmConfig
from farm.dsl import parse_rules
from farm.engine import Engine
from farm.transduce import RuleSet, transduce_patterns

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))


def ruleset_of(text: str, filename: str = "test.farm") -> RuleSet:
    parsed = parse_rules(text, filename)
    return transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("FARM_CACHE_DIR", str(path))
    return path


@pytest.fixture
def engine(cache_dir: Path) -> Engine:
    return Engine(FarmConfig.from_env(dict(os.environ)))


@pytest.fixture(scope="session")
def session_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """One cache for tests that only need compiled rulesets, so each ruleset compiles once per run."""
    config = FarmConfig(cache_dir=tmp_path_factory.mktemp("session-cache"), opt_level=1)
    return Engine(config)
