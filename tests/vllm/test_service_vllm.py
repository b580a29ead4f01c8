"""The HTTP service in front of a real vLLM engine (qwen3_vllm_score)."""

from __future__ import annotations

import concurrent.futures as cf
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from engines import vllm_backend  # noqa: E402
from pairs import DOCS, QUERIES  # noqa: E402
from server_helpers import running_server  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    holder = {}

    def load():
        holder["backend"] = vllm_backend("qwen3_vllm_score", tiny_model_dir)
        return holder["backend"]

    with running_server(load, max_docs_per_request=100) as base:
        yield base, holder["backend"]


def test_rerank_and_score_over_http(served):
    base, backend = served
    texts = [d for d in DOCS if isinstance(d, str)]
    expected = backend.score(QUERIES[0], texts)
    r = httpx.post(f"{base}/v2/rerank", json={"query": QUERIES[0], "documents": texts}, timeout=120)
    assert r.status_code == 200, r.text
    for item in r.json()["results"]:
        assert item["relevance_score"] == pytest.approx(expected[item["index"]], abs=1e-5)
    assert r.json()["meta"]["backend"] == "qwen3_vllm_score"
    s = httpx.post(f"{base}/score", json={"queries": QUERIES[0], "documents": texts}, timeout=120)
    assert [d["score"] for d in s.json()["data"]] == pytest.approx(expected, abs=1e-5)


def test_concurrent_requests_over_http(served):
    base, backend = served
    texts = [d for d in DOCS if isinstance(d, str) and d.strip()]
    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda q: httpx.post(
                    f"{base}/v1/score_with_meta", json={"query": q, "docs": texts}, timeout=300
                ),
                QUERIES * 2,
            )
        )
    assert [r.status_code for r in responses] == [200] * 8
    for q, r in zip(QUERIES * 2, responses, strict=True):
        assert r.json()["scores"] == pytest.approx(backend.score(q, texts), abs=1e-5)


def test_bad_input_over_http(served):
    base, _ = served
    r = httpx.post(f"{base}/rerank", json={"query": "word " * 600, "documents": ["a"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "query"
    assert httpx.post(f"{base}/rerank", json={"query": "ok", "documents": ["a"]}).status_code == 200
