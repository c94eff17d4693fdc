"""Recursion without Python's stack: a function over a deep structure is written as a generator that yields
the generator of each sub-call (`result = yield self.walk(child)`) instead of calling itself, and `run`
drives them with a list as the stack. The code reads like the recursive version, depth is bounded by
memory only (DESIGN.md: no recursion in Python on user-driven depth), and the order of work is unchanged.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

T = TypeVar("T")
Step = Generator[Any, Any, T]  # yields sub-steps, receives their results, returns a T


def run(step: Step[T]) -> T:
    stack: list[Step[Any]] = [step]
    value: Any = None
    while True:
        try:
            sub = stack[-1].send(value)
        except StopIteration as done:
            stack.pop()
            if not stack:
                return done.value  # type: ignore[no-any-return]
            value = done.value
            continue
        stack.append(sub)
        value = None
