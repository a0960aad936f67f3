"""Prometheus metrics, in a registry per app (so that several apps can live in one process, as in tests).

Requests are labelled by route template (``/v1/sessions/{session_id}``), never by raw path, so
session ids cannot blow up the label cardinality.
"""

from __future__ import annotations

import time

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Pure ASGI middleware that counts and times every HTTP request.

        Not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs every request in a task
        group and pipes the response through a memory stream, which profiled at a sizeable share of
        a small request's cost.
        """

        async def observe(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            start = time.perf_counter()
            status = 500  # if the app raises before answering, ServerErrorMiddleware answers 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                # The router records the matched route in the scope it was given.
                template = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(scope["method"], template, str(status)).inc()
                self.latency.labels(scope["method"], template).observe(time.perf_counter() - start)

        return observe

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
