"""The folded-state cache: a query folds only the log entries posted since the last one on the session.

The states here are plain tuples of the blob and the entries folded into it, so every test sees
exactly what was decoded and folded, with no model involved.
"""

from __future__ import annotations

from service.folded_states import FoldedStates
from service.store import Session, Snapshot


def snapshot(log: list[bytes], blob: bytes | None = None, session_id: str = "s") -> Snapshot:
    session = Session(session_id, "t", "m", "f", "test", {}, 0.0, 60, num_points=len(log))
    return Snapshot(session, blob, log, log_points=len(log), fold_epoch=0 if blob is None else 1)


class Recorder:
    """``stored`` and ``fold`` for the cache, recording each call."""

    def __init__(self) -> None:
        self.decoded: list[bytes | None] = []
        self.folded: list[list[bytes]] = []

    def stored(self, snap: Snapshot) -> tuple:
        self.decoded.append(snap.state)
        return (snap.state,)

    def fold(self, state: tuple, entries: list[bytes]) -> tuple:
        self.folded.append(list(entries))
        return (*state, *entries)

    def state(self, cache: FoldedStates, snap: Snapshot, fingerprint: str = "fp") -> tuple:
        return cache.state(fingerprint, snap, self.stored, self.fold)


def test_the_first_query_decodes_the_blob_and_folds_the_whole_log() -> None:
    r = Recorder()
    assert r.state(FoldedStates(4), snapshot([b"a", b"b"], blob=b"B")) == (b"B", b"a", b"b")
    assert r.decoded == [b"B"] and r.folded == [[b"a", b"b"]]


def test_a_later_query_folds_only_the_entries_appended_since() -> None:
    r, cache = Recorder(), FoldedStates(4)
    r.state(cache, snapshot([b"a", b"b"]))
    assert r.state(cache, snapshot([b"a", b"b", b"c", b"d"])) == (None, b"a", b"b", b"c", b"d")
    assert r.decoded == [None] and r.folded == [[b"a", b"b"], [b"c", b"d"]]


def test_with_no_post_in_between_the_very_same_state_object_is_returned() -> None:
    r, cache = Recorder(), FoldedStates(4)
    first = r.state(cache, snapshot([b"a"]))
    assert r.state(cache, snapshot([b"a"])) is first
    assert r.folded == [[b"a"]]


def test_a_new_blob_or_a_different_log_head_is_folded_from_scratch() -> None:
    r, cache = Recorder(), FoldedStates(4)
    r.state(cache, snapshot([b"a", b"b"]))
    assert r.state(cache, snapshot([b"c"], blob=b"B")) == (b"B", b"c")  # a fold committed
    assert r.state(cache, snapshot([b"x", b"c"], blob=b"B")) == (b"B", b"x", b"c")  # Redis lost writes, took others
    assert r.decoded == [None, b"B", b"B"]


def test_sessions_and_models_have_their_own_entries() -> None:
    r, cache = Recorder(), FoldedStates(4)
    r.state(cache, snapshot([b"a"], session_id="one"))
    r.state(cache, snapshot([b"a"], session_id="two"))
    r.state(cache, snapshot([b"a"], session_id="one"), fingerprint="other model")
    assert len(r.decoded) == 3


def test_the_least_recently_used_entry_is_evicted_beyond_capacity() -> None:
    r, cache = Recorder(), FoldedStates(2)
    for session_id in ("one", "two", "three"):
        r.state(cache, snapshot([b"a"], session_id=session_id))
    r.state(cache, snapshot([b"a"], session_id="three"))
    assert len(r.decoded) == 3  # "three" is cached
    r.state(cache, snapshot([b"a"], session_id="one"))
    assert len(r.decoded) == 4  # "one" was evicted


def test_a_capacity_of_zero_keeps_nothing() -> None:
    r, cache = Recorder(), FoldedStates(0)
    for _ in range(2):
        r.state(cache, snapshot([b"a"]))
    assert r.folded == [[b"a"], [b"a"]]


def test_an_older_snapshot_does_not_replace_a_newer_state() -> None:
    """Concurrent queries may finish out of order: the state of the snapshot with more points stays."""
    r, cache = Recorder(), FoldedStates(4)
    r.state(cache, snapshot([b"a", b"b", b"c"]))
    r.state(cache, snapshot([b"x"], blob=b"B"))  # a query of a snapshot with fewer points ends last
    assert r.state(cache, snapshot([b"a", b"b", b"c", b"d"])) == (None, b"a", b"b", b"c", b"d")
    assert r.folded[-1] == [b"d"]


def test_an_exact_entry_is_reused_only_for_the_very_same_blob_and_log() -> None:
    """``exact`` serves states that depend on the whole log at once (a provisional auto map): a
    longer log is rebuilt from scratch, never extended."""
    built: list[list[bytes]] = []

    def build(snap: Snapshot) -> tuple:
        built.append(list(snap.log))
        return (snap.state, *snap.log)

    cache = FoldedStates(4)
    first = cache.exact("fp", snapshot([b"a"]), build)
    assert cache.exact("fp", snapshot([b"a"]), build) is first
    assert cache.exact("fp", snapshot([b"a", b"b"]), build) == (None, b"a", b"b")
    assert cache.exact("fp", snapshot([b"a", b"b"], blob=b"B"), build) == (b"B", b"a", b"b")
    assert built == [[b"a"], [b"a", b"b"], [b"a", b"b"]]
    nothing_kept = FoldedStates(0)
    assert nothing_kept.exact("fp", snapshot([b"a"]), build) is not nothing_kept.exact("fp", snapshot([b"a"]), build)
