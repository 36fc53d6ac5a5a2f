"""keep_freed_memory: freed blocks stay in the process to be reused, instead of going back to the system
(and being faulted in again page by page at the next step)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from tests.paths import PROJECT

# A fresh interpreter: malloc a 24 MiB block, touch it, free it, and report the resident memory (MiB)
# given back by the free.
RETURNED = textwrap.dedent(
    """
    import ctypes, ctypes.util, os, sys
    sys.path.insert(0, {root!r})
    from utils.allocator import keep_freed_memory
    if {keep}:
        assert keep_freed_memory()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")
    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page / 2**20
    block = libc.malloc(24 * 2**20)
    ctypes.memset(block, 1, 24 * 2**20)
    before = resident()
    libc.free(block)
    print(before - resident())
    """
)


def returned_mib(keep: bool) -> float:
    code = RETURNED.format(root=str(PROJECT), keep=keep)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}  # defaults
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc knobs")
def test_freed_blocks_stay_in_the_process():
    assert returned_mib(keep=False) > 20  # glibc's default: a fresh 24 MiB block is mmapped and unmapped
    assert returned_mib(keep=True) < 1  # kept: the block stays on the heap for the next allocation
