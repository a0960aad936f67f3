"""retain_freed_memory: large buffers come from the heap, and freeing them keeps them there.

Runs in a fresh interpreter, because malloc's thresholds are per-process state. glibc's
``mallinfo2`` tells heap bytes from mmapped ones. Without the call, glibc's defaults mmap the
first 20 MB buffer (threshold 128 KiB), so the first check fails.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux"
    or platform.libc_ver()[0] != "glibc"
    or not hasattr(ctypes.CDLL(None), "mallinfo2"),  # glibc >= 2.33
    reason="glibc's mallopt and mallinfo2 only",
)

PROBE = """
import ctypes, torch
from model.allocator import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
assert retain_freed_memory()
before = libc.mallinfo2()
t = torch.empty(5 << 20).fill_(1.0)  # 20 MB
held = libc.mallinfo2()
del t
after = libc.mallinfo2()
print(held.hblkhd - before.hblkhd, after.arena - held.arena, after.fordblks - held.fordblks)
"""


def test_large_buffers_come_from_the_heap_and_stay_there() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    mmapped, heap_change, freed_in_heap = (int(v) for v in out.split())
    assert mmapped == 0  # served from the heap, not a fresh mmap
    assert heap_change == 0  # free did not trim the heap back to the kernel
    assert freed_in_heap >= 20 << 20  # the buffer is free heap memory, ready for the next step


def test_reports_false_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    from model import allocator

    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.retain_freed_memory() is False
