"""The cluster's wire contract (farm/cluster/messages.py), without any server."""

from __future__ import annotations

import json

import pytest

from farm.cluster.coordinator import CompileRequest
from farm.cluster.messages import WIRE_VERSION, CompileMessage, Status, TaskResult, WirePart, content_key, shared_texts
from farm.errors import WireFormatError
from farm.lang.dsl import parse_rules
from farm.lang.transduce import transduce_patterns


def one_rule_request() -> CompileRequest:
    parsed = parse_rules("rule wire_me: (f ?x (g 1)) => (g ?x)")
    ruleset = transduce_patterns(parsed.patterns, parsed.declared_ops, warn=False)
    return CompileRequest.for_ruleset("wire_me", ruleset, "x86-64", 2)


def message_for(request: CompileRequest) -> CompileMessage:
    return CompileMessage(request.pattern_id, request.target, request.opt_level, "k" * 64, {"llc": "16.0.6"},
                          tuple(WirePart.of(name, text) for name, text in request.parts), request.ruleset_json)


def test_a_message_round_trips_through_json() -> None:
    message = message_for(one_rule_request())
    assert CompileMessage.from_wire(json.loads(json.dumps(message.to_wire()))) == message


def test_the_runtime_travels_by_content_key_and_the_rules_inline() -> None:
    request = one_rule_request()
    message = message_for(request)
    texts = dict(request.parts)
    runtime, rules = message.parts
    assert (runtime.name, runtime.text, runtime.shared_key) == ("runtime", "", content_key(texts["runtime"]))
    assert (rules.name, rules.text, rules.shared_key) == ("rules", texts["rules"], "")
    assert shared_texts(request.parts) == {content_key(texts["runtime"]): texts["runtime"]}
    inline = len(json.dumps({**message.to_wire(), "parts": [list(p) for p in request.parts]}))
    assert len(json.dumps(message.to_wire())) < inline / 4  # the runtime is about 80% of a one-rule message


@pytest.mark.parametrize("change", [
    {"v": WIRE_VERSION + 1}, {"v": None}, {"opt_level": "2"}, {"opt_level": True}, {"parts": [["runtime", ""]]},
    {"versions": ["llc"]},
])
def test_another_version_or_a_malformed_message_is_refused_by_name(change: dict[str, object]) -> None:
    wire = {**message_for(one_rule_request()).to_wire(), **change}
    with pytest.raises(WireFormatError, match="wire version|malformed"):
        CompileMessage.from_wire(wire)


def test_a_message_without_its_version_or_not_an_object_is_refused() -> None:
    wire = message_for(one_rule_request()).to_wire()
    del wire["v"]
    for data in (wire, ["not", "an", "object"]):
        with pytest.raises(WireFormatError):
            CompileMessage.from_wire(data)


def test_task_results_round_trip_and_anything_else_is_a_failure_that_says_what() -> None:
    done = TaskResult(Status.COMPILED, "k" * 64, sha256="s" * 64, seconds=1.5)
    assert TaskResult.from_wire(json.loads(json.dumps(done.to_wire()))) == done
    assert done.status == "compiled" and f"{Status.DEAD_LETTER}" == "dead-letter"  # wire strings
    old = TaskResult.from_wire({"status": "compiled", "key": "k"})  # a worker of a release before versions
    assert old.status is Status.FAILED and "wire version" in old.error
    odd = TaskResult.from_wire({"v": WIRE_VERSION, "status": "exploded", "key": "k"})
    assert odd.status is Status.FAILED and "malformed task result" in odd.error and odd.key == "k"
    raised = TaskResult.failure(ValueError("boom"))
    assert raised.status is Status.FAILED and raised.error == "ValueError: boom"
