"""Columns for a native export: sized exactly once farm_mark has counted the nodes (exact_columns), or, for a
large export, sized by a bound and written in one walk (bounded_columns).

A large export's columns are fresh memory that farm_export then writes through: as arrays, each 4 KiB page is
a page fault on first touch (~2 us on a VM; the 7 MB of columns of a 362,881-node normal form took 1,420-1,775 of
them, a third of the export). So they are views of one private anonymous mapping instead, whose pages are
populated in bulk (MADV_POPULATE_WRITE, Linux 5.14+: ~1.5 us a page, no fault), by farm_populate on the
caller's thread while farm_export writes on the library's (farm.runtime.loader): populating costs more than
the export's walk of the heap (factorial's normal form: 3.3-3.9 ms of pages, 2.6-2.9 ms of walk). The advice
is only advice: where the kernel refuses it, the pages fault in one by one. A small export keeps plain arrays:
a mapping costs system calls.

Measured on the 2-core VM (7 MiB of columns, written once): arrays 4.0-5.0 ms; populated pages 2.5-3.0 ms. Huge
pages (MADV_HUGEPAGE) measured 0.75-1.0 ms, but in some stretches 14-19 ms with the same 4 faults (most likely
pages the host had taken back through the VM's balloon and backs again on first touch): not asked for, so the
figure stays predictable.

The views are the result graph's columns (farm.lang.terms.Column); they keep the mapping alive, and it is
unmapped when the last of them goes.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from array import array

from farm.lang.terms import Column, Typecode

# Below this, arrays (measured, columns written once: 0.5 MiB 0.18 ms as arrays, 0.28 ms mapped; 1 MiB 0.54 and
# 0.29 ms; 7 MiB 4.2 and 0.97 ms, 1,794 page faults and 4)
MAPPED_MIN_BYTES = 1 << 20
# Columns sized by a bound (bounded_columns) from this much: below, counting the nodes first (farm_mark) and
# filling exact columns costs less than a mapping (reverse-1000: its space bounds 1.1 MB of columns for a normal
# form of 2,000 nodes; its export took 0.17-0.25 ms that way, 0.28-0.35 ms through a bounded mapping). At 2 MiB
# instead, fibonacci's 75,026-node export (2.7 MB bound) took about the same, populated alongside: 1.4-2.1 ms
# against 1.5-3.1 (8 alternating processes each).
BOUNDED_MIN_BYTES = 4 << 20
_ALIGN = 8  # each column starts 8-byte aligned (the 64-bit one included; farm_export's populate needs it)
_MAP_NORESERVE = 0x4000  # <sys/mman.h> on Linux; Python's mmap module has no name for it


def exact_columns(layout: list[tuple[Typecode, int]]) -> tuple[list[Column], bool]:
    """Zeroed columns of these (typecode, length): arrays, or views of one mapping whose pages nobody touched
    yet when they take MAPPED_MIN_BYTES or more in all (on Linux); and whether they are that."""
    if _bytes(layout) < MAPPED_MIN_BYTES or not sys.platform.startswith("linux"):
        return [array(typecode, [0]) * length for typecode, length in layout], False  # one write per page
    return _mapped(layout), True


def bounded_columns(layout: list[tuple[Typecode, int]]) -> list[Column] | None:
    """Columns of these (typecode, length) bounds, as views of one mapping whose pages nobody touched yet,
    when they take BOUNDED_MIN_BYTES or more (on Linux); else None. Only address space is reserved
    (MAP_NORESERVE): a bound far above what is written costs nothing more. The caller slices the views to
    what was written."""
    if _bytes(layout) < BOUNDED_MIN_BYTES or not sys.platform.startswith("linux"):
        return None
    return _mapped(layout)


def _starts(layout: list[tuple[Typecode, int]]) -> tuple[list[int], list[int]]:
    sizes = [array(typecode).itemsize * length for typecode, length in layout]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + -(-size // _ALIGN) * _ALIGN)
    return starts, sizes


def _bytes(layout: list[tuple[Typecode, int]]) -> int:
    return _starts(layout)[0][-1]


def _mapped(layout: list[tuple[Typecode, int]]) -> list[Column]:
    starts, sizes = _starts(layout)
    region = mmap.mmap(-1, starts[-1], flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    whole = memoryview(region)
    return [whole[start:start + size].cast(typecode) for (typecode, _), start, size in zip(layout, starts, sizes)]


def address(column: Column) -> int:
    """The address of a column's first cell (an "i64*" or "i32*" argument; 0 for an empty column), valid
    while the column is alive and, for an array, not resized."""
    if isinstance(column, array):
        return column.buffer_info()[0]
    if not len(column):
        return 0
    return ctypes.addressof(ctypes.c_char.from_buffer(column))
