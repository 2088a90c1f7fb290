"""How a one-shot process hands memory back to the system: later, so that it can reuse it.

A registration allocates and frees tens of volume-sized tensors (a 2 mm pelvis's 12-channel
MIND descriptors are 70 MB) at every pyramid level and optimiser step. glibc's ``malloc`` maps
every block above a threshold that it adapts only up to 32 MiB afresh from the kernel, and
unmaps it when freed, so each new tensor page-faults its memory in again. On the real pair at
2 mm (one thread, 2026-12-07) that was 300 k page faults and 0.6-0.9 s of system time in a
5 s registration; with blocks up to 256 MiB kept in the heap for reuse, 75 k faults and
0.1-0.3 s, at the same peak RSS (665 MiB).

Blocks above 256 MiB (a full-resolution CT's copies) are still mapped and unmapped, so that
they cannot fragment the heap much. At full resolution (the same pair on its DICOM grids, CT
512 x 512 x 409) the peak still rose, from 2537 to 2695 MiB, with no gain in time (22.0 and
23.1 s, idle machine, two threads). The setting belongs to a process that
registers and exits (the command line, the benchmark's worker); a library call does not change
its host's allocator.
"""

from __future__ import annotations

import ctypes
import logging

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 2**20
"""Blocks larger than this are mapped for themselves and given back as soon as they are freed."""
TRIM_THRESHOLD_BYTES = 512 * 2**20
"""Free memory at the top of the heap is given back once it exceeds this."""

_log = logging.getLogger(__name__)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 256 MiB for reuse; ``False`` where there is no glibc.

    Returns:
        ``True`` if both settings were taken, ``False`` on another C library (nothing changes).
    """
    # the process's own symbols, libc's among them: ctypes.util.find_library("c") would run
    # ldconfig in a subprocess, 0.37 s added to the start of every command
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows takes no None here
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    taken = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not taken:
        _log.debug("mallopt refused the allocator settings; the defaults stay")
    return taken
