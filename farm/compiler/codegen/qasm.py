"""OpenQASM 3 text for rules over single-qubit gate circuits.

Gate subset (docs/rules.md): the unary operators id, x, y, z, h, s, sdg, t, tdg and sx, applied to one
wire. `(h (x ?q))` is the circuit "x, then h" on wire ?q. A rule is in the subset when its source and
target are such chains ending in the same wire variable and it has no guards. Each rule becomes a pair
of gate definitions, `rule_<i>_source` and `rule_<i>_target`, whose equivalence a QASM tool can check.
"""

from __future__ import annotations

from farm.errors import CodegenError
from farm.lang.rules import App, PatternExpr, Var
from farm.lang.transduce import RewriteRule, RuleSet

GATES = ("id", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx")


def _chain(rule: RewriteRule, expr: PatternExpr, side: str) -> tuple[list[str], str]:
    """Gates in application order (innermost first) and the wire variable."""
    gates: list[str] = []
    while isinstance(expr, App):
        if expr.op not in GATES or len(expr.args) != 1:
            raise CodegenError(f"rule {rule.name!r}: {side} uses {expr.op}/{len(expr.args)}, outside the OpenQASM "
                               f"gate subset (unary {', '.join(GATES)})")
        gates.append(expr.op)
        expr = expr.args[0]
    if not isinstance(expr, Var):
        raise CodegenError(f"rule {rule.name!r}: {side} must end in a wire variable such as ?q, not {expr}")
    return gates[::-1], expr.name


def _comment(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def generate_qasm(ruleset: RuleSet) -> str:
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', f"// farm ruleset {ruleset.fingerprint()}"]
    for rule in ruleset.rules:
        if rule.constraints:
            raise CodegenError(f"rule {rule.name!r}: guards cannot be expressed in OpenQASM")
        source, wire = _chain(rule, rule.source, "the source")
        target, target_wire = _chain(rule, rule.target, "the target")
        if wire != target_wire:
            raise CodegenError(f"rule {rule.name!r}: source and target must act on the same wire")
        lines.append(f"// rule {rule.index}: {_comment(rule.name)}: {_comment(str(rule))}")
        for side, gates in (("source", source), ("target", target)):
            body = " ".join(f"{g} q;" for g in gates)
            lines.append(f"gate rule_{rule.index}_{side} q {{ {body} }}".replace("{  }", "{ }"))
    return "\n".join(lines) + "\n"
