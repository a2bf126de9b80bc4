"""glibc's allocator told to keep a run's big buffers (``reused_memory``), so each forward reuses pages instead of
the kernel zero-filling fresh ones.

glibc serves requests over ``M_MMAP_THRESHOLD`` (at most 32 MB when left to itself) with a fresh ``mmap`` and
unmaps them when freed. A 2048² plane's activations are 64-100 MB each, so every forward pass page-faulted
~220,000 times per plane (about 0.5 s of kernel time per plane, 1.8x the whole plane's cost idle on the AMD EPYC
Zen 5 of docs/volumes.md). For the blocks of a run the thresholds are raised to ``HELD_BYTES``, then set back
to glibc's own limits and the held memory returned (``malloc_trim``). Elsewhere than glibc: nothing changes.
Process-wide while it lasts; it helps the thread that allocates in the main arena (``alnet segment``); a
thread's own arena (a viewer's worker thread, a Dask worker) still maps requests over 64 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Freed memory kept for reuse during a run (and the largest request served from the heap).
HELD_BYTES = 1 << 30
#: What the thresholds are set back to: glibc's largest dynamic mmap threshold and its trim threshold then.
RESTORED = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}


def _glibc():
    """glibc, or ``None`` (another C library, or none found)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def reused_memory() -> Iterator[bool]:
    """Keep freed memory for reuse while the block runs (yields whether glibc accepted it)."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    held = all(libc.mallopt(option, HELD_BYTES) == 1 for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))
    try:
        yield held
    finally:
        for option, value in RESTORED.items():
            libc.mallopt(option, value)
        libc.malloc_trim(0)
