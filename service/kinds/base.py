"""What a session kind is: the meaning of a session's opaque state, log and sums, behind one interface.

The store (``service.store``) keeps a session's state blob, its log entries and its sums as bytes
and numbers it never interprets. A kind gives them meaning, for the models that declare it
(``NeuralProcess.session_kind``):

- **parameters** (``params``): what a session of the kind is created with (e.g. the unit maps of
  regression), kept as meta fields of the session (``Session.params``). A fold may set some of
  them (``Fold.fields``), an append one (``Order``).
- **posts** (``encode``): a post, validated against the parameters, becomes one log entry
  (``LogEntry``): its bytes, its number of points and, for data that must arrive in order (event
  times), the ``Order`` the store checks atomically with the append (409 if it goes back).
- **folds** (``fold``): log entries folded into the state, each point scored first by a state
  that does not hold it (``service.calibration``); the scores become the fold's sums.
- **calibration** (``score_log``, ``calibration``): the scores of the unfolded log, computed
  without writing, and the kind's scores read back from the committed sums. Each kind has its own
  (Gaussian z-scores for regression; waiting-time PITs and time-rescaled waits for events).
- **queries** (``answer``): a batch of queries, each on its own session's snapshot; the service
  batches concurrent ones (``service.batcher``) and caches folded states (``service.folded_states``).

Every method is plain, synchronous model work, run in worker threads (``service.inference``). The
kind's HTTP routes live at the edge (``service.routers``): only they see the wire schemas.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from service.calibration import Calibration
from service.errors import ConflictError, CorruptStateError
from service.folded_states import FoldedStates
from service.registry import ServedModel
from service.store import Fold, Order, Session, Snapshot

logger = logging.getLogger(__name__)

Params = TypeVar("Params")
Post = TypeVar("Post", contravariant=True)
Query = TypeVar("Query", contravariant=True)
Answer = TypeVar("Answer", covariant=True)


@dataclass(frozen=True)
class LogEntry:
    """A post as the session log keeps it."""

    data: bytes
    points: int
    order: Order | None = None  # for posts that must not go back (checked by the store's append)


class SessionKind(Protocol[Params, Post, Query, Answer]):
    name: str  # recorded with each session, and declared by the models that serve the kind

    def params(self, session: Session) -> Params:
        """The session's parameters, decoded from its meta fields."""
        ...

    def encode(self, params: Params, post: Post) -> LogEntry:
        """A post, validated against the session's parameters (422 if it does not fit), as a log entry."""
        ...

    def fold(self, model: ServedModel, snapshot: Snapshot, scoring: bool) -> Fold:
        """The snapshot's state with its log folded in, the log's scores as sums (if ``scoring``),
        and any meta fields the fold sets."""
        ...

    def score_log(self, model: ServedModel, snapshot: Snapshot, scoring: bool) -> Calibration:
        """The scores the next fold of this snapshot would commit; writes nothing."""
        ...

    def calibration(self, sums: Mapping[str, float]) -> Calibration:
        """The kind's scores from a session's committed sums (``Session.sums``)."""
        ...

    def answer(self, model: ServedModel, folded: FoldedStates, queries: list[Query]) -> list[Answer | Exception]:
        """Answers to queries on any sessions of the kind, one per query; a query whose session fails
        gets its own exception, the others their answers."""
        ...


def require_kind(session: Session, kind: str, route: str) -> None:
    """409, before anything is read or written, when ``route`` is asked of a session of another kind."""
    if session.kind != kind:
        raise ConflictError(
            f"session {session.session_id} is a {session.kind} session; {route} is a route of {kind} sessions: "
            "nothing was changed"
        )


def stored_state(model: ServedModel, snapshot: Snapshot) -> Any:
    """The snapshot's state blob, decoded (the model's empty state before the session's first fold);
    CorruptStateError if it fails its checks (checksum, shapes, fingerprint), which the model reports
    as ValueError, or is missing after a fold. The session cannot be served then, but the blob is
    left as it is, for an operator to look at."""
    try:
        return model.net.state_from_bytes(snapshot.state_blob(model.empty_state))
    except ValueError as e:
        logger.error("session %s: stored state unreadable: %s", snapshot.session.session_id, e)
        raise CorruptStateError(
            f"the stored state of session {snapshot.session.session_id} is unreadable ({e}); it cannot be "
            "served or updated: delete the session and create it again"
        ) from e
