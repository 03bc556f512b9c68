"""Prometheus metrics, kept by `prometheus_client`.

Every metric lives in one `Metrics` object on `app.state.metrics`, registered in a registry of
its own (not the process-global one), so two apps in one process, as in the tests, never share
counts. `/metrics` renders that registry in Prometheus' text format. `prometheus_client` is
thread-safe: the engine thread and request handlers both record.

Example:
    >>> metrics = Metrics()
    >>> metrics.requests.labels(route="/v1/chat/completions", status="200").inc()
    >>> metrics.ttft.observe(0.12)
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric the server exports."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0.0) -> None:
        self.registry = CollectorRegistry()
        by_route = ("route", "status")
        reg = self.registry
        self.requests = Counter(
            "tuneforge_requests", "HTTP requests by route and status.", by_route, registry=reg
        )
        self.errors = Counter(
            "tuneforge_errors", "Requests answered with status >= 400.", by_route, registry=reg
        )
        self.prompt_tokens = Counter(
            "tuneforge_prompt_tokens", "Prompt tokens processed.", registry=reg
        )
        self.generated_tokens = Counter(
            "tuneforge_generated_tokens", "Completion tokens generated.", registry=reg
        )
        self.queue_depth = Gauge(
            "tuneforge_queue_depth", "Requests waiting for a batch slot.", registry=reg
        )
        self.queue_depth.set_function(queue_depth)
        self.ttft = Histogram(
            "tuneforge_time_to_first_token_seconds",
            "Time from request to first token.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.latency = Histogram(
            "tuneforge_request_latency_seconds",
            "End-to-end generation request latency.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)
