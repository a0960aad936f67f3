"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

A training step frees and re-allocates the same large activation buffers every step. With
glibc's defaults such a block is a fresh ``mmap`` each time, or heap memory trimmed back to the
kernel, so every step page-faults on thousands of new, zeroed pages and the step time swings from
run to run. Serving large blocks from the heap and trimming it rarely keeps them in the process.
The measurements (faults per step, tasks/s before and after) are in checkpoints/HISTORY.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit machines (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MAX = 32 << 20
TRIM_THRESHOLD = 1 << 30


def retain_freed_memory() -> bool:
    """Serve allocations up to 32 MB from the heap and trim it only past 1 GiB of free memory.

    Returns whether the allocator took the settings (False off glibc, e.g. musl or macOS). The
    process keeps its peak heap for its lifetime: right for training and benchmarks, whose
    working set is the same every step.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mmap_set = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    trim_set = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)
