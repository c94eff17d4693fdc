"""Counting what farm does, best effort: a count that cannot be written is lost (and logged), never the
work it counts (a cache hit stays a hit with the counters unreachable)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from farm.errors import BackendUnavailable
from farm.log import get_logger

log = get_logger(__name__)


class CountSink(Protocol):
    """Where counts go (the index's counters): all a store needs to know of them."""

    def incr(self, counter: str, amount: float = 1) -> None: ...


def best_effort(what: str, count: Callable[[], None]) -> None:
    try:
        count()
    except BackendUnavailable as exc:
        log.warning("%s was not counted: %s", what, exc)


__all__ = ["CountSink", "best_effort"]
