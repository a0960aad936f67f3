"""Folds in a child process of their own, so that they never hold the API process's GIL.

Why: a fold is tens of ms of model work in many small torch calls (a tiled fold of 256 points,
scored: ~75 ms). In a thread of the API process, every Python step between those calls takes the
GIL from the event loop, so the posts of a hot session queue behind its folds whatever the thread's
CPU priority (bench.ab_service, context_hot, one hot session, 16 writers, four side-by-side runs:
p99 22-41 ms with a fold thread, 14-24 ms with this process; docs/OPERATIONS.md). In a child
process at a lower CPU priority (``fold_nice``) a fold competes only for CPU, which the kernel
gives to the API first.

- The child is started at the app's startup (``start``), which waits for it (``started``, about two
  seconds, while the rest of the startup runs), so that a ready service can fold: the posts that
  found a hot session's log full waited for the child's start (bench.service_load predict_hot as
  the first scenario: p99 1.2-1.6 s), and a crash in those seconds left the log unfolded.
- Its first task loads the served models from their checkpoints (safetensors, as the registry
  does) and checks their fingerprints against the parent's; each fold then sends only the kind,
  the model's fingerprint and the snapshot (~100 KB). Nothing large goes through the child's
  start-up pipe, whose read end the parent keeps open until the write ends: with the models
  there, a child that died while starting (a Ctrl-C, the OOM killer) left the writer blocked for
  good and the worker's startup hung (seen). A task goes through the pool's queue, and a dead
  child then breaks the pool instead. Children are
  started from a thread of their own, never from the event loop (starting one takes a moment);
  that thread lives as long as the pool, since the parent-death signal (``service.parent_death``)
  follows the thread that started the child.
- The child logs as the service does (JSON lines) and ignores SIGINT (a Ctrl-C reaches the whole
  process group; the parent decides when folds stop). It starts with SIGINT blocked (the starter
  thread blocks it, and a child inherits its spawning thread's mask), so a Ctrl-C during its
  imports is discarded rather than printed as a traceback.
- If it dies (the OOM killer, a crash), the folds in flight fail with a 503 for a post waiting on
  one, which loses nothing: their points stay in the log and a later post folds them. A new child
  is started at once, or, if the last one died within ``STABLE_SECONDS`` of its start, only after
  a back-off that doubles up to ``MAX_BACKOFF_SECONDS`` (folds fail fast meanwhile), so that a child
  that cannot start (a model that fails to load, too little memory) is not restarted in a loop.

Cost: one process per API worker, ~280 MB resident with the shipped models.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from service.errors import UnavailableError
from service.logs import configure_logging
from service.parent_death import terminate_with_parent
from service.registry import ServedModel
from service.store import Fold, Snapshot

logger = logging.getLogger(__name__)

STABLE_SECONDS = 30.0  # a child that dies sooner after its start is restarted only after a back-off
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
CLOSE_SECONDS = 10.0  # close() waits this long for a fold in flight, then kills the child
START_SECONDS = 120.0  # started() gives up after this long (a child starts in about two seconds)

_models: Mapping[str, Any] = {}  # in the child: the served models by fingerprint


def _start_child(nice: int, torch_threads: int, parent_pid: int, log_level: str) -> None:
    """The child's initializer: logging as the parent's, its priority, one torch thread."""
    terminate_with_parent(parent_pid)
    # Ctrl-C is the parent's to handle (it closes the pool). SIGINT came in blocked (see
    # _block_ctrl_c): ignoring it discards one pressed while the child was importing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    configure_logging(log_level)
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
        except OSError as e:  # not allowed: folds run at the parent's priority
            logger.warning("the fold process keeps its parent's priority (setpriority failed: %s)", e)
    torch.set_num_threads(torch_threads)


def _block_ctrl_c() -> None:
    """The starter thread's initializer. A child inherits the signal mask of the thread that
    spawns it, so it starts with SIGINT blocked: a Ctrl-C during its seconds of imports (before
    its initializer can ignore the signal) would otherwise print a KeyboardInterrupt traceback.
    The parent is unaffected: the kernel delivers its SIGINT to a thread that does not block it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _load_models(paths: Mapping[str, Path]) -> int:
    """In the child, its first task: load the models (fingerprint -> checkpoint), refusing a checkpoint
    that changed since the parent loaded it; its pid."""
    global _models
    loaded = {fingerprint: ServedModel.load(path) for fingerprint, path in paths.items()}
    changed = [str(paths[f]) for f, model in loaded.items() if model.fingerprint != f]
    if changed:
        raise RuntimeError(f"checkpoints changed since the service loaded them: {', '.join(changed)}")
    _models = loaded
    return os.getpid()


def _fold(kind: Any, fingerprint: str, snapshot: Snapshot, scoring: bool) -> Fold:
    """In the child: ``kind.fold`` with the model of that fingerprint."""
    return kind.fold(_models[fingerprint], snapshot, scoring)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class FoldProcess:
    """Runs ``kind.fold(model, snapshot, scoring)`` in one child process, one fold at a time."""

    def __init__(self, models: Mapping[str, ServedModel], nice: int = 0, torch_threads: int = 1) -> None:
        """``models``: every model a fold may name, by fingerprint; those loaded from a checkpoint
        (``ServedModel.path``) are the ones the child can fold with."""
        log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        self._paths = {fingerprint: model.path for fingerprint, model in models.items() if model.path is not None}
        self._args = (nice, torch_threads, os.getpid(), log_level)
        # Every submit to the pool (which may start a child, see the module docstring) runs here.
        self._starter = concurrent.futures.ThreadPoolExecutor(1, "fold-starter", initializer=_block_ctrl_c)
        self._pool = self._new_pool()
        self._started_at = time.monotonic()  # of the current pool's child (started by ``start`` or a first fold)
        self._backoff = 0.0
        self._retry_at = 0.0  # no new child before this time (time.monotonic)
        self._pid: int | None = None
        self._closing = False
        self._ready: concurrent.futures.Future[int] | None = None  # set by ``start``, per child

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: a fork of a process running threads (the event loop's, torch's) may copy a
        # lock held at that instant and deadlock in the child.
        return concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_child, initargs=self._args
        )

    def start(self) -> None:
        """Start the child in the background and hand it the models, its first task (a fold not
        preceded by ``start`` calls it); ``started`` waits for it."""
        self._started_at = time.monotonic()
        self._ready = concurrent.futures.Future()
        submitted = self._starter.submit(self._pool.submit, _load_models, self._paths)
        submitted.add_done_callback(functools.partial(self._watch_start, self._ready))

    async def started(self, timeout: float = START_SECONDS) -> int:
        """Wait until the child started by ``start`` holds the models; its pid. Raises if it could not
        start, or did not within ``timeout`` seconds."""
        if self._ready is None:
            raise RuntimeError("started() before start()")
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._ready)), timeout)
        except TimeoutError as e:
            raise RuntimeError(f"the fold process did not start within {timeout:g} s") from e

    def _watch_start(self, ready: concurrent.futures.Future[int], submitted: concurrent.futures.Future) -> None:
        """Record the child's pid, or log why it did not start (otherwise unseen until a fold fails)."""
        if submitted.exception() is not None:
            if not self._closing:
                logger.error("the fold process could not be started: %s", submitted.exception())
            ready.set_exception(submitted.exception())  # type: ignore[arg-type]
            return

        def done(answered: concurrent.futures.Future) -> None:
            if answered.cancelled():  # closed before the child ran it
                ready.cancel()
            elif answered.exception() is None:
                self._pid = answered.result()
                ready.set_result(answered.result())
            else:
                if not self._closing:
                    logger.error("the fold process failed at its start: %r", answered.exception())
                ready.set_exception(answered.exception())  # type: ignore[arg-type]

        submitted.result().add_done_callback(done)

    async def fold(self, kind: Any, model: Any, snapshot: Snapshot, scoring: bool) -> Fold:
        """The fold, computed in the child; raises what ``kind.fold`` raised there, and
        ``UnavailableError`` if the child died or is being restarted."""
        if time.monotonic() < self._retry_at:
            raise UnavailableError("the fold process is restarting; the points are in the log and will be folded")
        if model.fingerprint not in self._paths:
            raise RuntimeError(f"model {model.name} was not loaded from a checkpoint: the fold process cannot load it")
        self._start_unless_started()  # no ``start`` yet for this child: the models go first
        pool = self._pool
        loop = asyncio.get_running_loop()
        try:
            submitted = await loop.run_in_executor(
                self._starter, pool.submit, _fold, kind, model.fingerprint, snapshot, scoring
            )
            return await asyncio.wrap_future(submitted)
        except concurrent.futures.process.BrokenProcessPool as e:
            if self._pool is pool:  # the first fold to see it replaces the pool (all of this runs on the loop)
                self._replace(pool)
            raise UnavailableError("the fold process died during this fold; its points stay in the log") from e

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        lived = time.monotonic() - self._started_at
        if lived > STABLE_SECONDS:
            self._backoff = 0.0
        else:
            self._backoff = min(MAX_BACKOFF_SECONDS, 2 * self._backoff or FIRST_BACKOFF_SECONDS)
        logger.error("the fold process died %.0f s after its start; a new one starts in %.1f s", lived, self._backoff)
        broken.shutdown(wait=True)  # quick: a broken pool has no child left; this frees its queues
        self._pool, self._pid, self._ready = self._new_pool(), None, None
        self._retry_at = time.monotonic() + self._backoff
        asyncio.get_running_loop().call_later(self._backoff, self._start_unless_started)

    def _start_unless_started(self) -> None:
        if self._ready is None and not self._closing:  # a fold may have started it first
            self.start()

    def close(self) -> None:
        """Stop the child once its fold in flight (if any) has ended, waiting at most ``CLOSE_SECONDS``
        (then it is killed); queued folds are dropped. Waits, so that the pool's queues are released
        before the interpreter exits (otherwise Python's resource tracker warns of leaked semaphores)."""
        self._closing = True
        # The pool's own wait has no time limit: run it aside, so that a hung fold can be killed.
        stopper = threading.Thread(
            target=self._pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, name="fold-stop", daemon=True
        )
        stopper.start()
        stopper.join(CLOSE_SECONDS)
        if stopper.is_alive() and self._pid is not None and _alive(self._pid):
            logger.warning("the fold process did not stop within %.0f s: killing it", CLOSE_SECONDS)
            os.kill(self._pid, signal.SIGKILL)
            stopper.join(CLOSE_SECONDS)
        # Last: the child gets SIGTERM when the thread that started it ends (the parent-death signal).
        self._starter.shutdown(wait=True)
