"""Prometheus metrics, summed across gunicorn workers (multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

REQUESTS = Counter(
    "chatsvc_requests_total", "HTTP requests answered.", ["route", "status"]
)
STREAMS_OPEN = Gauge(
    "chatsvc_streams_open", "Streams open now.", multiprocess_mode="livesum"
)
STREAMS = Counter(
    "chatsvc_streams_total", "Streams ended, by how they ended.", ["outcome"]
)
TTFT = Histogram(
    "chatsvc_time_to_first_token_seconds",
    "From a request's arrival to its first chunk written.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
CHUNKS = Counter(
    "chatsvc_chunks_total", "Upstream chunks relayed (keep-alives excluded).", ["route"]
)
# The value the most recent live worker saw: one that has just seen the store come
# back is right even if another has not looked since it went away.
STORE_UP = Gauge(
    "chatsvc_store_up",
    "1 when the shared store answers, else 0.",
    multiprocess_mode="livemostrecent",
)
UPSTREAM_ERRORS = Counter(
    "chatsvc_upstream_errors_total", "Errors from Ollama or reaching it.", ["kind"]
)
UPSTREAM_UP = Gauge(
    "chatsvc_upstream_up",
    "1 while an Ollama host answers, else 0.",
    ["host"],
    multiprocess_mode="livemostrecent",
)
UPSTREAM_IN_FLIGHT = Gauge(
    "chatsvc_upstream_in_flight",
    "Requests each Ollama host is serving for chatsvc now.",
    ["host"],
    multiprocess_mode="livesum",
)
QUEUE_WAITING = Gauge(
    "chatsvc_queue_waiting",
    "Requests waiting in chatsvc's queue for a free host.",
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "chatsvc_queue_wait_seconds",
    "How long a request waited in chatsvc's queue for a free host.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
# Every outcome is exported from the start, so that a rate() or a ratio over one
# that has not happened yet is 0 rather than "no data".
OUTCOMES = ("completed", "cancelled", "upstream_error", "timeout", "shutdown")
for _outcome in OUTCOMES:
    STREAMS.labels(_outcome)


def exposition() -> tuple[bytes, str]:
    """The /metrics body and its content type, all workers summed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
