"""qwen3_transformers with compiled layers on the CPU (inductor), the tiny model: after
startup no request compiles anything, whatever its size; without the warm-up a request of
one document would recompile the last layer (dynamo specialises size 1), and the backend
counts it and logs a WARNING naming dynamo's reason.

Two backends, each compiled (about a minute each on a 2-core CPU)."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from reranker.backends.transformers import qwen3  # noqa: E402
from reranker.core.protocol import ScoreRequest  # noqa: E402
from reranker.core.registry import load_backend  # noqa: E402

OPTIONS = {
    "max_model_len": 512,
    "batch_layout": "packed",
    "share_query_prefix": True,
    "torch_compile": True,
}


def docs(n: int) -> list[str]:
    return [f"document {k}: " + "some words " * (k * 7 % 23) for k in range(n)]


def requests_of_every_size(backend) -> None:
    for n in (1, 2, 3, 16, 33):
        backend.score_with_meta(f"query of {n} documents", docs(n))
    backend.score_requests(  # the scheduler's coalesced form: several queries, one call
        [ScoreRequest("first query", docs(2)), ScoreRequest("second", docs(1))]
    )


def test_without_the_warm_up_a_new_size_recompiles_and_is_logged(
    tiny_model_dir, monkeypatch, caplog
):
    monkeypatch.setattr(qwen3, "warm_up_batches", lambda *args, **kwargs: [])
    monkeypatch.setattr(
        qwen3.Qwen3TransformersBackend,
        "_warm_up_jobs",
        lambda self: [qwen3.ScoreJob("q", ["a", "b", "c"], self.default_instruction())],
    )
    backend = load_backend("qwen3_transformers", {"model_name": str(tiny_model_dir), **OPTIONS})
    try:
        before = backend.runtime_counters()["recompiles"]
        with caplog.at_level(logging.WARNING):
            backend.score_with_meta("one document", docs(1))
        assert backend.runtime_counters()["recompiles"] > before
        warnings = [r.getMessage() for r in caplog.records if r.name.startswith("reranker")]
        assert any("recompiled after startup" in w for w in warnings), warnings
    finally:
        backend.close()


def test_after_the_warm_up_no_request_compiles(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="reranker.backends.transformers.qwen3"):
        backend = load_backend("qwen3_transformers", {"model_name": str(tiny_model_dir), **OPTIONS})
    try:
        assert backend.compiled
        assert any("warm-up done in" in r.getMessage() for r in caplog.records)
        before = backend.runtime_counters()["recompiles"]
        requests_of_every_size(backend)
        assert backend.runtime_counters() == {"recompiles": before, "graph_misses": 0}
    finally:
        backend.close()
