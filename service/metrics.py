"""Prometheus metrics, in a registry per app (so that several apps can live in one process, as in tests).

With several worker processes (``service.workers``), ``PROMETHEUS_MULTIPROC_DIR`` is set: every
process writes its values to files there, and ``/metrics``, whichever worker answers it, reads
all of them (prometheus-client's multiprocess mode), so counters and histograms are totals over
the workers, including workers that have exited since the service started.

Requests are labelled by route template (``/v1/sessions/{session_id}``), never by raw path, so
session ids cannot blow up the label cardinality.

Calibration is aggregated across sessions per model, from the folds this process committed. Event
sessions (``service.kinds.events_calibration``): counters of scored events and of their waiting-time
PIT bins. Regression sessions (``service.kinds.regression_calibration``): counters of scored values,
interval hits and PIT bins (sum them across processes), and coverage gauges, this process's hits /
scored values since it started. A ratio cannot be summed, and the max or the latest of the
workers' ratios would pass one worker's share of the traffic off as the service's; so with
several workers each live worker's gauge is shown, labelled by its ``pid`` (multiprocess mode
``liveall``), and the service-wide coverage is the ratio of the summed counters
(``cmanp_calibration_covered_values_total / cmanp_calibration_scored_values_total``).
"""

from __future__ import annotations

import os
import time

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.kinds.events_calibration import EventScores
from service.kinds.regression_calibration import LEVELS, PIT_BINS, Aggregates
from service.settings import MULTIPROCESS_DIR_ENV


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_ENV)

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
        self.event_posts = counter("event_posts", "event posts applied to a session state (updates)")
        self.events = counter("events", "events applied")
        self.forecasts = counter("forecasts", "forecast requests served")
        self.sessions_created = counter("sessions_created", "sessions created")
        self.sessions_deleted = counter("sessions_deleted", "sessions deleted")
        self.scored_values = counter("calibration_scored_values", "context values scored before folding", ("model",))
        self.covered = counter(
            "calibration_covered_values", "scored values inside the central predictive interval", ("model", "level")
        )
        self.pit = counter("calibration_pit_values", "scored values per PIT bin [bin, bin + 0.1)", ("model", "bin"))
        self.out_of_range = counter(
            "out_of_range_points", "context points outside the model's training range", ("model",)
        )
        self.coverage = Gauge(
            "cmanp_calibration_coverage",
            "fraction of scored values inside the central predictive interval (this process)",
            ("model", "level"),
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.scored_events = counter("event_calibration_scored_events", "events scored before folding", ("model",))
        self.event_pit = counter(
            "event_calibration_pit_events", "scored events per waiting-time PIT bin [bin, bin + 0.1)", ("model", "bin")
        )
        self._calibration: dict[str, Aggregates] = {}  # per model, this process's folds

    def record_fold(self, model: str, folded: Aggregates) -> None:
        """Add a committed fold's calibration sums to the model's counters and gauges."""
        self.scored_values.labels(model).inc(folded.values)
        self.out_of_range.labels(model).inc(folded.out_of_range)
        for i, count in enumerate(folded.pit):
            self.pit.labels(model, f"{i / PIT_BINS:.1f}").inc(count)
        for level, covered in zip(LEVELS, folded.covered, strict=True):
            self.covered.labels(model, f"{level:g}").inc(covered)
        total = self._calibration[model] = self._calibration.get(model, Aggregates()) + folded
        coverage = total.coverage()
        if coverage is not None:  # None until this process has scored a value of the model
            for level, fraction in zip(LEVELS, coverage, strict=True):
                self.coverage.labels(model, f"{level:g}").set(fraction)

    def record_event_fold(self, model: str, folded: EventScores) -> None:
        """Add a committed fold's event calibration sums to the model's counters."""
        self.scored_events.labels(model).inc(folded.events)
        for i, count in enumerate(folded.pit):
            self.event_pit.labels(model, f"{i / len(folded.pit):.1f}").inc(count)

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
        registry = self.registry
        if self.multiprocess_dir is not None:  # every worker's values, not only this process's
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def close(self) -> None:
        """On this process's exit: drop its live gauges (its counters stay in the totals)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)
