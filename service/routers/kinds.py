"""The session kinds this server serves, each with its HTTP edge (``KindRoutes``).

The common session routes (``service.routers.sessions``) look a kind up here by name: the name a
model declares (``NeuralProcess.session_kind``) when a session is created, the name the session
recorded afterwards. A new kind is one more entry in ``SERVED``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from service.calibration import Calibration
from service.errors import ConflictError
from service.kinds.base import SessionKind
from service.registry import ServedModel
from service.routers import events, regression
from service.schemas import CreateSession
from service.store import Session, Snapshot

# The parameters of a new session of the kind, from the create body and the model (422 if they do not fit).
ParamsFn = Callable[[CreateSession, ServedModel], dict[str, str]]
# GET's answer: the common fields, then the session, its calibration, whether this server scores,
# its model (None if no longer served) and its snapshot (None for a session just created).
InfoFn = Callable[[dict[str, Any], Session, Calibration, bool, ServedModel | None, Snapshot | None], BaseModel]


# The kind's fields of a served model's entry in GET /v1/models (e.g. dim_x for regression).
DescribeFn = Callable[[ServedModel], dict[str, Any]]


@dataclass(frozen=True)
class KindRoutes:
    kind: SessionKind
    router: APIRouter  # the kind's own routes, e.g. POST /v1/sessions/{id}/context
    create_fields: frozenset[str]  # the fields of CreateSession that are the kind's parameters
    params: ParamsFn
    info: InfoFn
    describe: DescribeFn


SERVED: dict[str, KindRoutes] = {
    routes.kind.name: routes
    for routes in (
        KindRoutes(
            regression.REGRESSION,
            regression.router,
            frozenset({"x_transform", "y_transform"}),
            regression.session_params,
            regression.info,
            regression.describe,
        ),
        KindRoutes(
            events.EVENTS,
            events.router,
            frozenset({"time_origin", "time_scale"}),
            events.session_params,
            events.info,
            events.describe,
        ),
    )
}


def routes_of(kind: str) -> KindRoutes:
    """The routes of a kind of session; 409 if this server does not serve that kind."""
    routes = SERVED.get(kind)
    if routes is None:
        raise ConflictError(f"sessions of kind {kind!r} are not served here (served: {', '.join(sorted(SERVED))})")
    return routes
