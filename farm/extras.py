"""Optional dependency groups (the pip extras of pyproject.toml) and the modules whose absence names them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from farm.errors import MissingExtra

# Top-level modules of each extra's requirements (and of what they import), as Python imports them.
EXTRA_OF_MODULE = {module: "cluster" for module in ("celery", "kombu", "billiard", "redis", "minio",
                                                     "prometheus_client")}


def missing_extra(exc: ModuleNotFoundError) -> MissingExtra | None:
    """The MissingExtra an import failure means, or None when the module is not part of an extra."""
    module = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    return MissingExtra(module, extra) if extra else None


@contextmanager
def needs_extra() -> Iterator[None]:
    """Turn the import failure of an absent optional dependency into a MissingExtra that says what to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        raise missing from None
