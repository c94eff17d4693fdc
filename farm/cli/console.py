"""What the commands write: one-line messages on stderr (`say`), and rich consoles for tables, progress bars and
live views (`out`, `err`).

rich costs a new process more than 20 ms to import, more than everything else a cached `farm rewrite` does, so it
is imported only when something is drawn with it: a console is made on first use, and a message to a stream that
is not a terminal (a pipe, a file, a log) is written as the plain text rich would write there."""

from __future__ import annotations

import os
import sys
from functools import cache
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console


@cache
def out() -> Console:
    """stdout's console (tables)."""
    from rich.console import Console

    return Console()


@cache
def err() -> Console:
    """stderr's console (tables, progress bars). Soft wrap: a message is one line however narrow the terminal, and
    never cut at 80 columns into a pipe or a log."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def say(text: str, lead: str = "", style: str = "") -> None:
    """One line on stderr: `lead` (in `style` on a terminal: "yellow", "red") directly followed by `text`, both
    plain text, never read as markup."""
    if _plain(sys.stderr):
        sys.stderr.write(f"{lead}{text}\n")
        return
    from rich.text import Text

    err().print(Text.assemble((lead, style), text))


def _plain(stream: TextIO) -> bool:
    """Whether rich would write to `stream` without escape codes: it is not a terminal and no variable asks for
    them (TTY_COMPATIBLE=1, FORCE_COLOR: rich's own switches). In doubt, rich writes it."""
    if os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR", "") != "":
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream: left to rich
        return False


def forget_consoles() -> None:
    """The next out() and err() are made anew: a console settles its colours and width when made, from the streams
    and variables of that moment, and a server's next command has the streams and variables of another client."""
    out.cache_clear()
    err.cache_clear()
