"""The last folded state of recently queried sessions, per process, so that a query on a hot session
folds only the log entries posted since the previous query.

A query needs the session's state with its whole unfolded log folded in. On a hot session the log
holds up to ``fold_threshold`` points and gains a few between two queries, so folding it from the
blob every time costs far more than folding just the new entries into the state the last query
built; with no post in between, the very same state object is returned, with whatever the model
cached on it (its derived latents). The cache knows nothing of the state's type: the session's
kind says how to decode the stored blob and how to fold log entries into a state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.store import Snapshot

State = TypeVar("State")


@dataclass(frozen=True)
class _Folded(Generic[State]):
    """A state blob with the first log entries of its session folded in."""

    blob: bytes | None  # None: no stored blob yet (the model's empty state)
    log: list[bytes]
    num_points: int  # the session's points at the time: a later snapshot never has fewer
    state: State


class FoldedStates(Generic[State]):
    """At most ``capacity`` folded states (LRU), keyed by model fingerprint and session id.

    An entry serves a snapshot only if the snapshot's blob is byte-equal to the entry's and its
    log starts with the entry's log entries: appends only add at the log's tail, and only a fold's
    commit rewrites the blob (trimming the log), so the rest of the log is then exactly what the
    entry lacks. Comparing contents, not counters (fold epoch, version), keeps this exact even
    where Redis lost its last writes and then took others (failover, ``appendfsync``). Folding is
    exact and order-independent, so the result equals a fold from scratch up to float rounding.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Folded[State]] = OrderedDict()
        self._lock = threading.Lock()  # worker threads share the cache

    def state(
        self,
        fingerprint: str,
        snapshot: Snapshot,
        stored: Callable[[Snapshot], State],
        fold: Callable[[State, list[bytes]], State],
    ) -> State:
        """The snapshot's state with its log folded in: ``stored(snapshot)`` decodes its blob, and
        ``fold(state, entries)`` folds log entries into a state (a new object; the old one is kept)."""
        key = (fingerprint, snapshot.session.session_id)
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and cached.blob == snapshot.state and snapshot.log[: len(cached.log)] == cached.log:
            state, done = cached.state, len(cached.log)
        else:
            state, done = stored(snapshot), 0
        if done < len(snapshot.log):
            state = fold(state, snapshot.log[done:])
        if self.capacity and (cached is None or state is not cached.state):
            self._remember(key, _Folded(snapshot.state, snapshot.log, snapshot.session.num_points, state))
        return state

    def exact(self, fingerprint: str, snapshot: Snapshot, build: Callable[[Snapshot], State]) -> State:
        """The state ``build(snapshot)`` makes, reused only for a snapshot with the very same blob and
        log: for states that depend on the whole log at once (an auto-scaled session's provisional
        map moves with every post), so that repeated queries with no post between share one state
        (and what the model cached on it) instead of rebuilding it each time."""
        key = (fingerprint + ":exact", snapshot.session.session_id)
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and cached.blob == snapshot.state and cached.log == snapshot.log:
            return cached.state
        state = build(snapshot)
        if self.capacity:
            self._remember(key, _Folded(snapshot.state, snapshot.log, snapshot.session.num_points, state))
        return state

    def _remember(self, key: tuple[str, str], entry: _Folded[State]) -> None:
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current.num_points > entry.num_points:
                return  # a query of a later snapshot got here first: keep its state
            self._entries[key] = entry
            self._entries.move_to_end(key)
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
