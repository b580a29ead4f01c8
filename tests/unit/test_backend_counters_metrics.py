"""/metrics carries the backend's own counters (recompiles after startup, CUDA graph
misses), read at each scrape from the backend behind the scheduler."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest

from reranker.service.metrics import ServiceMetrics


class CountingBackend:
    def __init__(self) -> None:
        self.counters = {"recompiles": 0, "graph_misses": 0}

    def runtime_counters(self) -> dict[str, int]:
        return dict(self.counters)


def scrape(metrics: ServiceMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_zero_before_a_backend_and_for_one_without_counters():
    metrics = ServiceMetrics()
    text = scrape(metrics)
    assert "reranker_backend_recompiles_total 0.0" in text
    assert "reranker_backend_graph_misses_total 0.0" in text
    metrics.bind_scheduler(
        SimpleNamespace(
            backend=object(), queued_docs=0, queued_tokens=0, queued_chars=0, tokens_per_second=None
        )
    )
    assert "reranker_backend_recompiles_total 0.0" in scrape(metrics)


def test_the_backends_counters_at_each_scrape():
    metrics = ServiceMetrics()
    backend = CountingBackend()
    metrics.bind_scheduler(
        SimpleNamespace(
            backend=backend, queued_docs=0, queued_tokens=0, queued_chars=0, tokens_per_second=None
        )
    )
    backend.counters.update(recompiles=2, graph_misses=5)
    text = scrape(metrics)
    assert "reranker_backend_recompiles_total 2.0" in text
    assert "reranker_backend_graph_misses_total 5.0" in text
    assert "# TYPE reranker_backend_recompiles_total counter" in text
