"""Folds in a child process of their own, so that they never hold the API process's GIL.

Why: a fold is tens of ms of model work in many small torch calls (a tiled fold of 256 points,
scored: ~75 ms). In a thread of the API process, every Python step between those calls takes the
GIL from the event loop, so the posts of a hot session queue behind its folds whatever the thread's
CPU priority (bench.ab_service, context_hot, one hot session, 16 writers: p99 41 ms with a fold
thread, 14 ms with this process; docs/OPERATIONS.md). In a child process at a lower CPU priority
(``fold_nice``) a fold competes only for CPU, which the kernel gives to the API first.

- ``start()`` spawns the child without waiting for it (the app calls it at startup), so that the
  first fold does not wait the seconds a child takes to import torch and load the models: under
  load, the posts that found a hot session's log full waited for it (bench.service_load
  predict_hot as its first scenario: p99 1.2-1.6 s with the child spawned at the first fold).
- It gets the served models once, at its start (pickled, ~20 MB for the shipped five), and each
  fold then sends only the kind, the model's fingerprint and the snapshot (~100 KB).
- It dies with its parent (``service.parent_death``), and ignores SIGINT (a Ctrl-C reaches the
  whole process group; the parent decides when folds stop).
- If it dies (the OOM killer, a crash), the folds in flight fail, which loses nothing: their points
  stay in the log and the next post folds them. A fresh child is started at once.

Cost: one process per API worker, ~280 MB resident with the shipped models.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

import torch

from service.parent_death import terminate_with_parent
from service.store import Fold, Snapshot

logger = logging.getLogger(__name__)

_models: Mapping[str, Any] = {}  # in the child: the served models by fingerprint


def _start_child(models: Mapping[str, Any], nice: int, torch_threads: int, parent_pid: int) -> None:
    """The child's initializer: its models, its priority, one torch thread per fold."""
    global _models
    terminate_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
        except OSError as e:  # not allowed: folds run at the parent's priority
            logger.warning("the fold process keeps its parent's priority (setpriority failed: %s)", e)
    torch.set_num_threads(torch_threads)
    _models = models


def _fold(kind: Any, fingerprint: str, snapshot: Snapshot, scoring: bool) -> Fold:
    """In the child: ``kind.fold`` with the model of that fingerprint."""
    return kind.fold(_models[fingerprint], snapshot, scoring)


class FoldProcess:
    """Runs ``kind.fold(model, snapshot, scoring)`` in one child process, one fold at a time."""

    def __init__(self, models: Mapping[str, Any], nice: int = 0, torch_threads: int = 1) -> None:
        """``models``: every model a fold may name, by fingerprint (each must pickle)."""
        self._args = (dict(models), nice, torch_threads, os.getpid())
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: a fork of a process running threads (the event loop's, torch's) may copy a
        # lock held at that instant and deadlock in the child.
        return concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_child, initargs=self._args
        )

    def start(self) -> None:
        """Spawn the child now, in the background (otherwise the first fold spawns it)."""
        self._pool.submit(os.getpid)

    async def fold(self, kind: Any, model: Any, snapshot: Snapshot, scoring: bool) -> Fold:
        """The fold, computed in the child; raises what ``kind.fold`` raised there."""
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, _fold, kind, model.fingerprint, snapshot, scoring
            )
        except concurrent.futures.process.BrokenProcessPool as e:
            with self._lock:
                if self._pool is pool:  # the first fold to see it replaces the pool
                    logger.error("the fold process died; starting a new one")
                    pool.shutdown(wait=True)  # a broken pool has no child left to wait for: this frees its queues
                    self._pool = self._new_pool()
                    self._pool.submit(os.getpid)
            raise RuntimeError("the fold process died during this fold; its points stay in the log") from e

    def close(self) -> None:
        """Stop the child once its fold in flight (if any) has ended; queued folds are dropped. Waits,
        so that the pool's queues are released before the interpreter exits (otherwise Python's
        resource tracker prints a warning about leaked semaphores at every shutdown)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
