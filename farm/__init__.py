"""farm: pattern-rewrite rules compiled to native code.

The public API in one import (each name loads its module on first use, so `import farm.cli` or a cache hit
pays only for what it touches):

    from farm import Engine, TermGraph, load_rules, transduce_patterns
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farm.config import FarmConfig
    from farm.dsl import load_rules, parse_rules
    from farm.engine import Engine
    from farm.errors import FarmError
    from farm.interp import RewriteResult
    from farm.terms import TermGraph
    from farm.transduce import RuleSet, transduce_patterns

_WHERE = {"Engine": "farm.engine", "FarmConfig": "farm.config", "FarmError": "farm.errors",
          "RewriteResult": "farm.interp", "RuleSet": "farm.transduce", "TermGraph": "farm.terms",
          "load_rules": "farm.dsl", "parse_rules": "farm.dsl", "transduce_patterns": "farm.transduce"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'farm' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = ["Engine", "FarmConfig", "FarmError", "RewriteResult", "RuleSet", "TermGraph", "load_rules", "parse_rules",
           "transduce_patterns"]
