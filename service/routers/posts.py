"""What the routes that add data to a session share (context points, events): the Idempotency-Key
header, the limit on a request's size, and the append of a kind's log entry."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import Header, Response

from service.dependencies import Services
from service.errors import TooLargeError
from service.kinds.base import LogEntry, SessionKind
from service.registry import ServedModel
from service.store import Appended, OnCommit, Session
from service.text import plural

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=128,
        description="repeats of a key (per session, the last keys are remembered) apply nothing "
        "and return the original answer",
    ),
]


def check_count(count: int, noun: str, services: Services) -> None:
    """413 for more than CMANP_MAX_POINTS_PER_REQUEST points (or events) in one request."""
    limit = services.settings.max_points_per_request
    if count > limit:
        raise TooLargeError(
            f"{plural(count, noun)} in one request; the limit is {limit} (CMANP_MAX_POINTS_PER_REQUEST)"
        )


async def append(
    services: Services,
    kind: SessionKind,
    model: ServedModel,
    session: Session,
    entry: LogEntry,
    idempotency_key: str | None,
    response: Response,
    record_fold: OnCommit,
) -> Appended:
    """Append the entry to the session's log, exactly once (folds run in the background, each
    committed one told to ``record_fold``); a replayed key is marked in the response and counted."""
    compute_fold = functools.partial(services.inference.fold, kind, model)
    appended = await services.store.append(
        session, entry.data, entry.points, idempotency_key, compute_fold, record_fold, entry.order
    )
    if appended.replayed:
        response.headers["Idempotent-Replayed"] = "true"
        services.metrics.idempotent_replays.inc()
    return appended
