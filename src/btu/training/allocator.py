"""Keep freed activation memory in the process instead of handing it back to the kernel.

With glibc's defaults, a training step's large activation tensors are mmap-ed and
unmapped, or trimmed off the heap, every step; each new one then page-faults its way
back in (the kernel zeroes every page). benchmarks/training_tricks.py counts the page
faults with and without these settings; their rows/s gain is within this machine's
run-to-run noise. Memory stays at the high-water mark of the run, which is what a
training process holds anyway.

Applied once per process by `train()` on glibc; `BTU_NO_MALLOPT=1` leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from functools import lru_cache

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # glibc's maximum: tensors under 32 MB come from the heap, not mmap
    M_TRIM_THRESHOLD: 1 << 30,  # do not give freed heap back until 1 GB is free at its top
    M_TOP_PAD: 64 << 20,  # grow the heap in 64 MB steps
}


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Apply SETTINGS with mallopt; True if they were applied (glibc, not disabled)."""
    if os.environ.get("BTU_NO_MALLOPT") == "1" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(k, v) == 1 for k, v in SETTINGS.items())
