"""Files farm writes whole: a reader, another process or a crash in the middle sees the old file or the
new one, never half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from farm.errors import WorkDirError


def atomic_write(path: Path, data: bytes | None = None, source: Path | None = None, *, mode: int | None = None,
                 exclusive: bool = False) -> None:
    """Write to a temp file in the same directory, then rename: readers see all or nothing.

    The file is created mode 0600 (mkstemp) unless `mode` is given. exclusive: never replace an existing file;
    FileExistsError instead (a hard link, not a rename, puts it in place: the check and the write are one step)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if mode is not None:
                    os.fchmod(out.fileno(), mode)
                if source is not None:
                    with open(source, "rb") as src:
                        shutil.copyfileobj(src, out)
                else:
                    out.write(data or b"")
                out.flush()
                os.fsync(out.fileno())
            if exclusive:
                os.link(tmp, path)
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except FileExistsError:
        raise
    except OSError as exc:
        raise WorkDirError(f"cannot write {path}: {exc.strerror or exc}") from None


__all__ = ["atomic_write"]
