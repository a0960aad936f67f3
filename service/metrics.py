"""Prometheus metrics, in a registry per app (so that several apps can live in one process, as in tests).

Requests are labelled by route template (``/v1/sessions/{session_id}``), never by raw path, so
session ids cannot blow up the label cardinality.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"cmanp_{name}", doc, labels, registry=self.registry)

        self.requests = counter("http_requests", "HTTP requests answered", ("method", "route", "status"))
        self.latency = Histogram(
            "cmanp_http_request_duration_seconds", "HTTP request latency", ("method", "route"), registry=self.registry
        )
        self.context_posts = counter("context_posts", "context posts applied to a session state (updates)")
        self.context_points = counter("context_points", "context points applied")
        self.idempotent_replays = counter("idempotent_replays", "context posts answered from an idempotency record")
        self.predictions = counter("predictions", "predict requests served")
        self.predicted_points = counter("predicted_points", "query points predicted")
        self.sessions_created = counter("sessions_created", "sessions created")
        self.sessions_deleted = counter("sessions_deleted", "sessions deleted")

    async def observe(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """HTTP middleware: count and time every request."""
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        self.requests.labels(request.method, template, str(response.status_code)).inc()
        self.latency.labels(request.method, template).observe(time.perf_counter() - start)
        return response

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
