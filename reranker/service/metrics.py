"""Prometheus metrics of one app instance (own registry: several apps can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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

    def observe_batch(self, requests: int, docs: int, seconds: float) -> None:
        """Record one coalesced backend run."""
        self.batch_requests.observe(requests)
        self.batch_documents.observe(docs)
