"""glibc's malloc, tuned for renders: freed image buffers are kept for the next render
instead of being handed back to the kernel and faulted in again.

A render allocates a few buffers of 10-30 MB (the draft-decoded source, its rotated copy,
the resized picture). glibc serves blocks that large with `mmap` until a freed one has
raised its dynamic threshold, and it gives free memory at the top of a thread's heap back
to the kernel; in the server (not in a loop rendering alone) that kept happening, so every
render of a 12 MP JPEG to 1024 px WebP touched ~5,800 fresh pages: 8 ms of its 133 ms of
CPU (bench/NOTES.md "Renders, issue #19"). With the thresholds fixed the pages stay
mapped: ~95 faults per render. The price is memory that stays in the process after a
render, bounded by the trim threshold per render thread.

Applied once per process, only on glibc, and never over an operator's own
`MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` (glibc reads those at start).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 32 MiB (glibc's own ceiling for the dynamic threshold) come from the heap;
# up to 64 MiB of free memory at the top of a heap is kept.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024

_applied = False


def keep_render_buffers() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True if they were set."""
    global _applied
    if _applied:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the operator's choice stands
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(
            M_TRIM_THRESHOLD, TRIM_THRESHOLD
        )
    except (OSError, AttributeError):
        return False
    if not done:
        log.warning("mallopt refused the render memory thresholds; left as they were")
        return False
    _applied = True
    return True
