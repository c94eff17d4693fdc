"""A RuleSet as JSON, so an artifact can carry the rules its library was built from.

A round trip keeps the fingerprint: `ruleset_from_json(ruleset_to_json(rs)).fingerprint() == rs.fingerprint()`.
"""

from __future__ import annotations

import json
from typing import Any

from farm.errors import FarmError
from farm.lang.rules import (
    Compare,
    Constraint,
    IsConst,
    Polarity,
    TermCondition,
    Var,
    from_postfix,
    to_postfix,
)
from farm.lang.transduce import RewriteRule, RuleSet


class RulesetFormatError(FarmError):
    """Stored ruleset JSON is not what ruleset_to_json writes."""


# Format 2 writes each expression as its flat postfix list (rules.to_postfix): JSON nested as deep as a
# pattern would hit the json module's recursion limit. Format 1 (nested lists) is still read.
FORMAT = 2


def _expr(e: Any) -> Any:
    return to_postfix(e)


def _unexpr(d: Any, nested: bool = False) -> Any:
    return from_postfix(_nested_to_postfix(d) if nested else d)


def _nested_to_postfix(d: Any) -> list[Any]:
    """Format 1's nested lists (["app", op, [args]], ["binop", op, l, r], ...) in postfix order, iteratively."""
    out: list[Any] = []
    stack: list[tuple[Any, bool]] = [(d, False)]
    while stack:
        item, expanded = stack.pop()
        operands = _nested_operands(item)
        if expanded or not operands:
            out.append(_nested_head(item))
            continue
        stack.append((item, True))
        stack.extend((operand, False) for operand in reversed(operands))
    return out


def _nested_operands(item: Any) -> list[Any]:
    tag = item[0]
    if tag == "app":
        return list(item[2])
    if tag == "binop":
        return [item[2], item[3]]
    return [item[1]] if tag in ("computed", "neg") else []


def _nested_head(item: Any) -> list[Any]:
    tag = item[0]
    if tag == "app":
        return ["app", item[1], len(item[2])]
    if tag == "binop":
        return ["binop", item[1]]
    return [tag] if tag in ("computed", "neg") else list(item)


def _constraint(c: Constraint) -> Any:
    if isinstance(c, IsConst):
        return ["const", c.var.name]
    if isinstance(c, Compare):
        return ["compare", c.op, _expr(c.left), _expr(c.right)]
    return ["condition", _expr(c.left), _expr(c.right), c.equal]


def _unconstraint(d: Any, nested: bool) -> Constraint:
    if d[0] == "const":
        return IsConst(Var(d[1]))
    if d[0] == "compare":
        return Compare(d[1], _unexpr(d[2], nested), _unexpr(d[3], nested))
    if d[0] == "condition":
        return TermCondition(_unexpr(d[1], nested), _unexpr(d[2], nested), bool(d[3]))
    raise RulesetFormatError(f"unknown constraint tag {d[0]!r}")


def ruleset_to_json(ruleset: RuleSet) -> str:
    rules = [{"index": r.index, "name": r.name, "origin": r.origin, "direction": r.direction.value,
              "source": _expr(r.source), "target": _expr(r.target),
              "constraints": [_constraint(c) for c in r.constraints], "priority": r.priority}
             for r in ruleset.rules]
    return json.dumps({"format": FORMAT, "signature": ruleset.signature, "rules": rules}, separators=(",", ":"))


def ruleset_from_json(text: str) -> RuleSet:
    try:
        data = json.loads(text)
        if data.get("format") not in (1, FORMAT):
            raise RulesetFormatError(f"unknown ruleset format {data.get('format')!r}")
        nested = data["format"] == 1
        rules = tuple(RewriteRule(r["index"], r["name"], r["origin"], Polarity(r["direction"]),
                                  _unexpr(r["source"], nested), _unexpr(r["target"], nested),
                                  tuple(_unconstraint(c, nested) for c in r["constraints"]), r["priority"])
                      for r in data["rules"])
        return RuleSet(rules, tuple((str(n), int(a)) for n, a in data["signature"]))
    except RecursionError:  # only format 1 nests; json's C parser has a depth limit
        raise RulesetFormatError("stored ruleset nests deeper than the json parser allows") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RulesetFormatError(f"stored ruleset is malformed: {exc}") from None
