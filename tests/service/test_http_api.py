"""The HTTP API on a real uvicorn server with the real transformers backend (tiny model)."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

DOCS = [
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "The Eiffel Tower is in Paris.",
    "Paris is the capital of France.",
    "Quantum chromodynamics describes the strong force.",
]
QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def base(transformers_server):
    return transformers_server


@pytest.fixture(scope="module")
def direct(tiny_model_dir):
    """The same backend called in-process: what the HTTP answers must equal."""
    from reranker.core.registry import load_backend

    b = load_backend(
        "qwen3_transformers", {"model_name": str(tiny_model_dir), "max_model_len": 512}
    )
    yield b
    b.close()


def post(base: str, path: str, body, **kw) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=120, **kw)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_shape_and_order(base, direct, path):
    r = post(base, path, {"query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = direct.score(QUERY, DOCS)
    assert body["id"] and body["model"]
    assert [x["index"] for x in body["results"]] == sorted(
        range(len(DOCS)), key=lambda i: -expected[i]
    )[:3]
    for item in body["results"]:
        assert item["relevance_score"] == pytest.approx(expected[item["index"]], abs=1e-5)
        assert item["document"]["text"] == DOCS[item["index"]]
    assert body["usage"]["prompt_tokens"] > 0
    assert body["meta"]["unique_docs"] == 4 and body["meta"]["input_docs"] == 5
    assert r.headers["x-request-id"]


def test_rerank_accepts_document_objects_and_large_top_n(base):
    r = post(
        base, "/rerank", {"query": QUERY, "documents": [{"text": d} for d in DOCS], "top_n": 50}
    )
    assert r.status_code == 200
    assert len(r.json()["results"]) == len(DOCS)  # top_n larger than the list: all, ranked
    assert "document" not in r.json()["results"][0]


def test_rerank_instruction_and_max_tokens_per_doc(base, direct):
    long_doc = "Paris " + "history of the city " * 200
    r = post(
        base,
        "/rerank",
        {
            "query": QUERY,
            "documents": [long_doc],
            "max_tokens_per_doc": 16,
            "instruction": "Find facts",
        },
    )
    assert r.status_code == 200
    assert r.json()["meta"]["truncated_docs"] == 1
    expected, _ = direct.score_with_meta(
        QUERY, [long_doc], instruction="Find facts", max_doc_tokens=16
    )
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(expected[0], abs=1e-5)


def test_score_vllm_shape(base, direct):
    r = post(base, "/score", {"queries": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(len(DOCS)))
    assert [d["score"] for d in data] == pytest.approx(direct.score(QUERY, DOCS), abs=1e-5)
    pairs = post(base, "/score", {"text_1": [QUERY, "bananas"], "text_2": DOCS[:2]})
    assert pairs.status_code == 200
    got = [d["score"] for d in pairs.json()["data"]]
    assert got[0] == pytest.approx(direct.score(QUERY, [DOCS[0]])[0], abs=1e-5)
    assert got[1] == pytest.approx(direct.score("bananas", [DOCS[1]])[0], abs=1e-5)


def test_v1_score_is_score(base):
    """vLLM clients call /v1/score: the same handler as /score, the same answer."""
    for body in (
        {"queries": QUERY, "documents": DOCS},
        {"text_1": [QUERY, "bananas"], "text_2": [DOCS[0], {"text": DOCS[1]}]},
    ):
        plain, v1 = post(base, "/score", body), post(base, "/v1/score", body)
        assert plain.status_code == v1.status_code == 200, v1.text
        a, b = plain.json(), v1.json()
        assert [d["index"] for d in b["data"]] == [d["index"] for d in a["data"]]
        assert [d["score"] for d in b["data"]] == pytest.approx(
            [d["score"] for d in a["data"]], abs=1e-5
        )
        assert b["usage"] == a["usage"] and b["model"] == a["model"]
        assert b["object"] == "list" and b["id"] == v1.headers["x-request-id"]
    assert httpx.get(f"{base}/openapi.json").json()["paths"]["/v1/score"]
    bad = post(base, "/v1/score", {"queries": ["a", "b"], "documents": ["x"]})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_score_with_meta_is_the_protocol(base, direct):
    docs = ["Paris", None, "", "   ", "Paris"]
    for normalize in (True, False):
        r = post(
            base, "/v1/score_with_meta", {"query": QUERY, "docs": docs, "normalize": normalize}
        )
        assert r.status_code == 200
        scores, meta = direct.score_with_meta(QUERY, docs, normalize)
        assert r.json()["scores"] == pytest.approx(scores, abs=1e-5)
        assert {k: v for k, v in r.json()["meta"].items() if k != "elapsed_ms"} == {
            k: v for k, v in meta.items() if k != "elapsed_ms"
        }


def test_ops_endpoints(base):
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    assert httpx.get(f"{base}/ready").json()["status"] == "ready"
    models = httpx.get(f"{base}/v1/models").json()
    assert models["data"][0]["ready"] is True
    assert httpx.get(f"{base}/openapi.json").json()["paths"]["/v2/rerank"]
    post(base, "/rerank", {"query": QUERY, "documents": DOCS})
    text = httpx.get(f"{base}/metrics").text
    for name in (
        "reranker_requests_total",
        "reranker_request_latency_seconds_bucket",
        "reranker_documents_total",
        "reranker_tokens_total",
        "reranker_batch_documents_bucket",
        "reranker_queue_documents",
        "reranker_dedup_ratio_bucket",
    ):
        assert name in text
    assert 'route="/rerank",status="200"' in text


def test_cohere_sdk_works_unchanged(base, direct):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key="unused", base_url=base)
    response = client.rerank(model="qwen3-reranker", query=QUERY, documents=DOCS, top_n=2)
    expected = direct.score(QUERY, DOCS)
    best = sorted(range(len(DOCS)), key=lambda i: -expected[i])[:2]
    assert [r.index for r in response.results] == best
    assert response.results[0].relevance_score == pytest.approx(expected[best[0]], abs=1e-5)


def test_concurrent_clients_get_sequential_scores(base, direct):
    """32 clients x 50 documents at once: all 200, scores equal to one-by-one scoring."""
    requests = [
        (
            f"query number {c} about {['cities', 'fruit', 'physics', 'code'][c % 4]}",
            [f"document {c}-{k}: " + "text " * (k % 17) for k in range(50)],
        )
        for c in range(32)
    ]
    runs_before = backend_runs(base)
    with cf.ThreadPoolExecutor(32) as pool:
        responses = list(
            pool.map(
                lambda qd: post(base, "/v1/score_with_meta", {"query": qd[0], "docs": qd[1]}),
                requests,
            )
        )
    assert [r.status_code for r in responses] == [200] * 32
    runs = backend_runs(base) - runs_before
    assert 1 <= runs < 32  # requests were coalesced into shared backend runs
    for (query, docs), r in zip(requests, responses, strict=True):
        assert r.json()["scores"] == pytest.approx(direct.score(query, docs), abs=1e-5)


def backend_runs(base: str) -> float:
    """How many coalesced backend runs the scheduler has made (from /metrics)."""
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("reranker_batch_requests_count"):
            return float(line.split()[-1])
    raise AssertionError("reranker_batch_requests_count missing from /metrics")
