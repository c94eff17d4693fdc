"""A RuleSet as JSON, so an artifact can carry the rules its library was built from.

A round trip keeps the fingerprint: `ruleset_from_json(ruleset_to_json(rs)).fingerprint() == rs.fingerprint()`.
"""

from __future__ import annotations

import json
from typing import Any

from farm.errors import FarmError
from farm.rules import (
    App,
    BinOp,
    Compare,
    Computed,
    Constraint,
    IsConst,
    Lit,
    Neg,
    Polarity,
    TermCondition,
    Var,
)
from farm.transduce import RewriteRule, RuleSet


class RulesetFormatError(FarmError):
    """Stored ruleset JSON is not what ruleset_to_json writes."""


def _expr(e: Any) -> Any:
    if isinstance(e, Var):
        return ["var", e.name]
    if isinstance(e, Lit):
        return ["lit", e.value]
    if isinstance(e, App):
        return ["app", e.op, [_expr(a) for a in e.args]]
    if isinstance(e, Computed):
        return ["computed", _expr(e.expr)]
    if isinstance(e, BinOp):
        return ["binop", e.op, _expr(e.left), _expr(e.right)]
    if isinstance(e, Neg):
        return ["neg", _expr(e.operand)]
    raise TypeError(f"not a pattern expression: {e!r}")


def _unexpr(d: Any) -> Any:
    tag = d[0]
    if tag == "var":
        return Var(d[1])
    if tag == "lit":
        return Lit(int(d[1]))
    if tag == "app":
        return App(d[1], tuple(_unexpr(a) for a in d[2]))
    if tag == "computed":
        return Computed(_unexpr(d[1]))
    if tag == "binop":
        return BinOp(d[1], _unexpr(d[2]), _unexpr(d[3]))
    if tag == "neg":
        return Neg(_unexpr(d[1]))
    raise RulesetFormatError(f"unknown expression tag {tag!r}")


def _constraint(c: Constraint) -> Any:
    if isinstance(c, IsConst):
        return ["const", c.var.name]
    if isinstance(c, Compare):
        return ["compare", c.op, _expr(c.left), _expr(c.right)]
    return ["condition", _expr(c.left), _expr(c.right), c.equal]


def _unconstraint(d: Any) -> Constraint:
    if d[0] == "const":
        return IsConst(Var(d[1]))
    if d[0] == "compare":
        return Compare(d[1], _unexpr(d[2]), _unexpr(d[3]))
    if d[0] == "condition":
        return TermCondition(_unexpr(d[1]), _unexpr(d[2]), bool(d[3]))
    raise RulesetFormatError(f"unknown constraint tag {d[0]!r}")


def ruleset_to_json(ruleset: RuleSet) -> str:
    rules = [{"index": r.index, "name": r.name, "origin": r.origin, "direction": r.direction.value,
              "source": _expr(r.source), "target": _expr(r.target),
              "constraints": [_constraint(c) for c in r.constraints], "priority": r.priority}
             for r in ruleset.rules]
    return json.dumps({"format": 1, "signature": ruleset.signature, "rules": rules}, separators=(",", ":"))


def ruleset_from_json(text: str) -> RuleSet:
    try:
        data = json.loads(text)
        if data.get("format") != 1:
            raise RulesetFormatError(f"unknown ruleset format {data.get('format')!r}")
        rules = tuple(RewriteRule(r["index"], r["name"], r["origin"], Polarity(r["direction"]),
                                  _unexpr(r["source"]), _unexpr(r["target"]),
                                  tuple(_unconstraint(c) for c in r["constraints"]), r["priority"])
                      for r in data["rules"])
        return RuleSet(rules, tuple((str(n), int(a)) for n, a in data["signature"]))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RulesetFormatError(f"stored ruleset is malformed: {exc}") from None
