"""Linux's parent-death signal: a child process gets SIGTERM when its parent dies, even by ``kill -9``.

Used for the uvicorn workers and the bundled redis-server, so that a killed supervisor (``kill -9``,
the OOM killer) leaves no orphan holding the port or serving the data directory that the next
start will use. The signal follows the *thread* that started the child: start children from a
thread that lives as long as they should (the main thread, or the one running the app's lifespan).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Looked up once, at import: the call is then safe between fork and exec (a ``preexec_fn``),
# where a dlopen/dlsym could deadlock on a lock held by another thread of the parent.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def terminate_with_parent(parent_pid: int) -> None:
    """Ask for SIGTERM when the parent dies; if ``parent_pid`` is no longer the parent (it died
    before the request took effect), terminate now. A no-op where the signal does not exist."""
    if _prctl is None:
        return
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
