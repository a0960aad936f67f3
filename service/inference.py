"""Where model work runs: worker threads, so that the event loop keeps serving while torch computes.

At most ``workers`` calls run at once, each with torch's intra-op thread count set to
``torch_threads`` (see ``service.settings`` for why the default is 1). The models are in eval
mode and read-only, so threads can share them. What the work is belongs to the session's kind
(``service.kinds``): folding a log (scoring its points for calibration unless ``scoring`` is off,
``CMANP_CALIBRATION``), scoring it without writing, and answering queries.

Queries are micro-batched per kind and model (``service.batcher``): a query that waits for a
worker joins a queue, and the one that gets the worker answers every queued query (up to
``max_batch``) in one call of its kind's ``answer``. Folded states are cached per session
(``service.folded_states``), so a query on a hot session folds only the entries posted since.

Folds are background work (a post answers before its fold ends), so they run in a lane of their
own: a child process at a lower CPU priority (``fold_nice``; ``service.fold_process`` says why a
process and not a thread). Sharing the query workers, a hot session's predicts queued behind its
folds (tens to hundreds of ms each); measured in bench.service_load's predict_hot with the tiled
default, docs/OPERATIONS.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import torch

from service.batcher import Batcher
from service.calibration import Calibration
from service.fold_process import FoldProcess
from service.folded_states import FoldedStates
from service.kinds.base import SessionKind
from service.registry import ServedModel
from service.store import Fold, Snapshot

T = TypeVar("T")


class Inference:
    def __init__(
        self,
        workers: int,
        torch_threads: int,
        max_batch: int = 16,
        scoring: bool = True,
        folded_states: int = 64,
        fold_nice: int = 0,
        models: Iterable[ServedModel] = (),
    ) -> None:
        """``models``: those whose sessions this process folds (the fold process loads their checkpoints)."""
        torch.set_num_threads(torch_threads)
        self._limiter = anyio.CapacityLimiter(workers)
        self._folds = FoldProcess({m.fingerprint: m for m in models}, fold_nice)
        self._max_batch = max_batch
        self._batchers: dict[tuple[str, str, str], Batcher] = {}  # per kind, model name and fingerprint
        self.scoring = scoring
        self.folded: FoldedStates = FoldedStates(folded_states)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread, once a worker is free."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def fold(self, kind: SessionKind, model: ServedModel, snapshot: Snapshot) -> Fold:
        """The session's state with its log folded in (exact update), and the log's calibration sums;
        in the fold process."""
        return await self._folds.fold(kind, model, snapshot, self.scoring)

    def start_folds(self) -> None:
        """Start the fold process in the background; ``folds_started`` waits for it."""
        self._folds.start()

    async def folds_started(self) -> None:
        """Wait until the fold process runs (raises if it could not start)."""
        await self._folds.started()

    def close(self) -> None:
        """Let the fold process end once its fold in flight (if any) has."""
        self._folds.close()

    async def score_log(self, kind: SessionKind, model: ServedModel, snapshot: Snapshot) -> Calibration:
        """The calibration sums the next fold of this snapshot would commit; writes nothing."""
        return await self.run(kind.score_log, model, snapshot, self.scoring)

    async def answer(self, kind: SessionKind, model: ServedModel, query: Any, batched: bool = True) -> Any:
        """The kind's answer to a query; ``batched``: with the queries of the same kind and model that
        queue beside it, in one call (otherwise alone, e.g. a large joint query)."""
        if batched:
            key = (kind.name, model.name, model.fingerprint)
            batcher = self._batchers.get(key)
            if batcher is None:
                answer_batch = functools.partial(kind.answer, model, self.folded)
                batcher = self._batchers[key] = Batcher(answer_batch, self._max_batch, self._limiter)
            return await batcher(query)
        (answer,) = await self.run(kind.answer, model, self.folded, [query])
        if isinstance(answer, Exception):
            raise answer
        return answer
