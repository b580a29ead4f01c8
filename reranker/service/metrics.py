"""Prometheus metrics of one app instance (own registry: several apps can coexist)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric

# Counters a backend keeps itself (``runtime_counters()``), read at each scrape:
# name in that dict -> (metric name without _total, help).
BACKEND_COUNTERS = {
    "recompiles": (
        "reranker_backend_recompiles",
        "torch.compile compilations after startup (each cost a request its time; the log "
        "names the reason); qwen3_transformers",
    ),
    "graph_misses": (
        "reranker_backend_graph_misses",
        "Batches meant for a CUDA graph that no captured shape fits (run without one, "
        "nothing captured at request time); qwen3_transformers",
    ),
}


class BackendCounters:
    """A collector of :data:`BACKEND_COUNTERS` from the backend behind the bound scheduler
    (0 where there is none, or it keeps no such counter)."""

    def __init__(self) -> None:
        self.scheduler: Any = None

    def values(self) -> dict[str, float]:
        """The backend's counters now."""
        backend = getattr(self.scheduler, "backend", None)
        read = getattr(backend, "runtime_counters", None)
        counters = read() if callable(read) else {}
        return {key: float(counters.get(key, 0)) for key in BACKEND_COUNTERS}

    def describe(self) -> Iterator[Metric]:
        """The metric families, without reading the backend."""
        for name, doc in BACKEND_COUNTERS.values():
            yield CounterMetricFamily(name, doc)

    def collect(self) -> Iterator[Metric]:
        """The metric families with the backend's values."""
        values = self.values()
        for key, (name, doc) in BACKEND_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=values[key])


class ServiceMetrics:
    """Requests, latency, documents, tokens, batches, queue depth, dedup."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "reranker_requests_total", "HTTP requests", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "reranker_request_latency_seconds",
            "HTTP request latency",
            ["route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.documents = Counter("reranker_documents_total", "Documents scored", registry=r)
        self.tokens = Counter("reranker_tokens_total", "Prompt tokens scored", registry=r)
        self.batch_requests = Histogram(
            "reranker_batch_requests",
            "Requests coalesced into one backend run",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.batch_documents = Histogram(
            "reranker_batch_documents",
            "Documents in one backend run",
            registry=r,
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 4096),
        )
        self.queue_depth = Gauge(
            "reranker_queue_documents", "Documents waiting for the backend", registry=r
        )
        self.dedup_ratio = Histogram(
            "reranker_dedup_ratio",
            "Share of duplicate documents per request",
            registry=r,
            buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0),
        )
        self.overloaded = Counter(
            "reranker_overloaded_total", "Requests refused with 429", registry=r
        )
        self.dropped = Counter(
            "reranker_dropped_requests_total",
            "Requests dropped before all of them was scored: the client disconnected, the "
            "deadline passed, or the caller cancelled",
            ["reason"],
            registry=r,
        )
        self.dropped_documents = Counter(
            "reranker_dropped_documents_total",
            "Documents of dropped requests that were never scored",
            ["reason"],
            registry=r,
        )
        for reason in ("disconnected", "expired", "cancelled"):
            self.dropped.labels(reason)
            self.dropped_documents.labels(reason)
        self.isolation_retries = Counter(
            "reranker_isolation_retries_total",
            "Failed backend calls re-scored in halves to find the failing request",
            registry=r,
        )
        self.queue_tokens = Gauge(
            "reranker_queue_tokens", "Estimated prompt tokens waiting for the backend", registry=r
        )
        self.queue_chars = Gauge(
            "reranker_queue_chars",
            "Characters of text held by requests not yet answered",
            registry=r,
        )
        self.backend_rate = Gauge(
            "reranker_backend_tokens_per_second",
            "The backend's measured rate in estimated tokens a second (recent calls)",
            registry=r,
        )

        self.backend_counters = BackendCounters()
        r.register(self.backend_counters)

        # Filled by a scaled-out service only (reranker.scale): which replica answered.
        self.replica_requests = Counter(
            "reranker_replica_requests_total",
            "Requests answered by each backend replica (Ray Serve), by replica and node",
            ["replica", "node"],
            registry=r,
        )
        self.replica_retries = Counter(
            "reranker_replica_retries_total",
            "Requests sent to another replica because theirs died or could not take them",
            ["reason"],
            registry=r,
        )

    def bind_scheduler(self, scheduler: Any) -> None:
        """Read the queue gauges, the measured rate and the backend's own counters from
        ``scheduler`` at each scrape."""
        self.backend_counters.scheduler = scheduler
        self.queue_depth.set_function(lambda: scheduler.queued_docs)
        self.queue_tokens.set_function(lambda: scheduler.queued_tokens)
        self.queue_chars.set_function(lambda: scheduler.queued_chars)
        self.backend_rate.set_function(lambda: scheduler.tokens_per_second or 0.0)

    def observe_drop(self, reason: str, docs: int) -> None:
        """Record a request dropped before it was all scored."""
        self.dropped.labels(reason).inc()
        self.dropped_documents.labels(reason).inc(docs)

    def observe_batch(self, requests: int, docs: int, seconds: float) -> None:
        """Record one coalesced backend run."""
        self.batch_requests.observe(requests)
        self.batch_documents.observe(docs)
