"""long_documents over HTTP, on the real service and the tiny Qwen3 model: the request
fields of /rerank, /score and /v1/score_with_meta, the deciding chunk's span in each
result, chunks counted in meta and usage, and 400s naming the field for bad values."""

from __future__ import annotations

import httpx
import pytest

QUERY = "What is the capital of France?"
LONG = " ".join(
    f"Part {i}: Paris is the capital of France and its largest city." for i in range(90)
)
SHORT = "Bananas are yellow."
CHUNK = {"long_documents": "chunk", "chunk_tokens": 64, "return_chunks": True}


@pytest.fixture(scope="module")
def base(transformers_server):
    return transformers_server


def post(base: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=120)


def test_rerank_reports_the_deciding_chunk_and_counts_every_chunk(base):
    body = {"query": QUERY, "documents": [SHORT, "  " + LONG]}
    truncated = post(base, "/v2/rerank", body).json()
    chunked = post(base, "/v2/rerank", {**body, **CHUNK}).json()
    meta = chunked["meta"]
    assert meta["chunked_docs"] == 1 and meta["scored_chunks"] > 10
    assert meta["dropped_chunks"] == 0 and "best_chunks" not in meta
    assert "chunked_docs" not in truncated["meta"]
    assert chunked["usage"]["total_tokens"] > truncated["usage"]["total_tokens"]
    by_index = {r["index"]: r for r in chunked["results"]}
    assert by_index[0]["chunk"] == {"index": 0, "start": 0, "end": len(SHORT), "chunks": 1}
    chunk = by_index[1]["chunk"]
    text = ("  " + LONG)[chunk["start"] : chunk["end"]]
    assert text and text == text.strip() and text in LONG and chunk["chunks"] > 10
    # The deciding chunk, sent as a document, scores what the long document scored.
    alone = post(base, "/v2/rerank", {"query": QUERY, "documents": [text]}).json()
    assert alone["results"][0]["relevance_score"] == pytest.approx(
        by_index[1]["relevance_score"], abs=1e-5
    )
    assert all("chunk" not in r for r in truncated["results"])


def test_score_with_meta_and_score_take_the_same_fields(base):
    r = post(base, "/v1/score_with_meta", {"query": QUERY, "docs": [LONG, None], **CHUNK})
    assert r.status_code == 200, r.text
    best = r.json()["meta"]["best_chunks"]
    assert best[1] is None and best[0]["chunks"] > 10
    r = post(base, "/v1/score", {"queries": QUERY, "documents": [LONG, SHORT], **CHUNK})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data[0]["chunk"]["chunks"] > 10 and data[1]["chunk"]["chunks"] == 1
    capped = post(
        base,
        "/v1/score_with_meta",
        {"query": QUERY, "docs": [LONG], **CHUNK, "max_chunks_per_doc": 3},
    ).json()["meta"]
    assert capped["scored_chunks"] == 3 and capped["dropped_chunks"] == best[0]["chunks"] - 3


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"long_documents": "sometimes"}, "long_documents"),
        ({"long_documents": "chunk", "chunk_tokens": 64, "chunk_overlap": 64}, "chunk_overlap"),
        ({"long_documents": "chunk", "chunk_tokens": 100_000}, "chunk_tokens"),
        ({"long_documents": "chunk", "chunk_tokens": 0}, "chunk_tokens"),
        ({"long_documents": "chunk", "chunk_aggregate": "median"}, "chunk_aggregate"),
        ({"long_documents": "chunk", "max_chunks_per_doc": 0}, "max_chunks_per_doc"),
    ],
)
@pytest.mark.parametrize("path", ["/v2/rerank", "/v1/score_with_meta"])
def test_bad_chunking_values_get_400_naming_the_field(base, path, fields, param):
    body = {"query": QUERY, "documents" if "rerank" in path else "docs": [LONG], **fields}
    r = post(base, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    # The server keeps serving.
    assert post(base, "/v2/rerank", {"query": QUERY, "documents": [SHORT]}).status_code == 200
