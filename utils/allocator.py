"""Keep freed tensor memory in the process (glibc malloc), so a training step does not fault it in again.

A slide step allocates and frees many 1-30 MB activations. glibc serves blocks above its mmap threshold
with fresh ``mmap`` calls and returns the top of the heap to the system beyond its trim threshold, so
with the defaults every step hands memory back and touches it again page by page: about 10-20 thousand
minor page faults per HiVE-MIL step at N5 = 500, each 10-20 us on a virtual machine, which is up to a
fifth of the step (benchmarks/bench_fold_profile.py). :func:`keep_freed_memory` raises both thresholds
(``mallopt``), after which freed blocks are reused: no faults once the heap has grown to the run's peak.
Memory already freed is not returned to the system before the process ends; the peak is not raised.
Only glibc has these knobs; elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit (4 * 1024 * 1024 * sizeof(long))
TRIM_THRESHOLD = 2**31  # never trim below 2 GiB of free heap top


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (module docstring); True when they were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
