"""farm's module loggers, made on first use: `logging` costs a new process about 3 ms to import (string, traceback
and textwrap with it), more than a cached rewrite's index lookups, and a rewrite that goes well logs nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from logging import Logger


class _OnFirstUse:
    """Stands for logging.getLogger(name): each call goes to that logger, `logging` imported at the first."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        import logging

        return getattr(logging.getLogger(self._name), attribute)


def get_logger(name: str) -> Logger:
    """A module's logger (`log = get_logger(__name__)`), as logging.getLogger(name) but imported on first use."""
    return cast("Logger", _OnFirstUse(name))
