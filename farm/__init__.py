"""farm: pattern-rewrite rules compiled to native code.

The public API in one import (each name loads its module on first use, so `import farm.cli` or a cache hit
pays only for what it touches):

    from farm import Engine, TermGraph, load_rules, transduce_patterns

`farm.__version__` is the version of the installed distribution, farm-rewrite (the name farm belongs to another
project on PyPI), or "0+unknown" when farm is imported from a source tree that was never installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farm.cache.engine import Engine
    from farm.config import FarmConfig
    from farm.errors import FarmError
    from farm.lang.dsl import load_rules, parse_rules
    from farm.lang.terms import TermGraph
    from farm.lang.transduce import RuleSet, transduce_patterns
    from farm.semantics import RewriteResult

    __version__: str

_WHERE = {"Engine": "farm.cache.engine", "FarmConfig": "farm.config", "FarmError": "farm.errors",
          "RewriteResult": "farm.semantics", "RuleSet": "farm.lang.transduce", "TermGraph": "farm.lang.terms",
          "load_rules": "farm.lang.dsl", "parse_rules": "farm.lang.dsl", "transduce_patterns": "farm.lang.transduce"}


DISTRIBUTION = "farm-rewrite"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name not in _WHERE:
        raise AttributeError(f"module 'farm' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # here: most imports of farm never ask

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


__all__ = ["Engine", "FarmConfig", "FarmError", "RewriteResult", "RuleSet", "TermGraph", "load_rules", "parse_rules",
           "transduce_patterns"]
