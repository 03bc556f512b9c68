"""Prometheus metrics, written by hand (prometheus_client is not a dependency).

Counters and histograms live in one `Metrics` object on `app.state.metrics`; `/metrics`
renders them in the Prometheus text exposition format (version 0.0.4). Thread-safe: the
engine thread and request handlers both record.

Example:
    >>> metrics.requests.inc(route="/v1/chat/completions", status="200")
    >>> metrics.ttft.observe(0.12)
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(
        f'{k}="{v}"'.replace("\n", " ") for k, v in ((k, _escape(v)) for k, v in pairs)
    )
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        lines += [f"{self.name}{_labels(k)} {v:g}" for k, v in items]
        if not items:
            lines.append(f"{self.name} 0")
        return lines


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {float(self.read()):g}",
        ]


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    def render(self) -> list[str]:
        with self._lock:
            counts, total_sum = list(self._counts), self._sum
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        running += counts[-1]
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {running}')
        lines.append(f"{self.name}_sum {total_sum:g}")
        lines.append(f"{self.name}_count {running}")
        return lines


class Metrics:
    """Every metric the server exports."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0.0) -> None:
        self.requests = Counter("tuneforge_requests_total", "HTTP requests by route and status.")
        self.errors = Counter("tuneforge_errors_total", "Requests answered with status >= 400.")
        self.prompt_tokens = Counter("tuneforge_prompt_tokens_total", "Prompt tokens processed.")
        self.generated_tokens = Counter(
            "tuneforge_generated_tokens_total", "Completion tokens generated."
        )
        self.ttft = Histogram(
            "tuneforge_time_to_first_token_seconds", "Time from request to first token."
        )
        self.latency = Histogram(
            "tuneforge_request_latency_seconds", "End-to-end generation request latency."
        )
        self.queue_depth = Gauge(
            "tuneforge_queue_depth", "Requests waiting for a batch slot.", queue_depth
        )

    def render(self) -> str:
        parts = [
            self.requests,
            self.errors,
            self.prompt_tokens,
            self.generated_tokens,
            self.queue_depth,
            self.ttft,
            self.latency,
        ]
        lines: list[str] = []
        for metric in parts:
            lines += metric.render()
        return "\n".join(lines) + "\n"
