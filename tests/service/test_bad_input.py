"""Bad input gets a 4xx JSON error (or a well-defined result); the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def base(transformers_server):
    return transformers_server


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param
    return err


BAD_BODIES = [
    ({"documents": ["a"]}, "query"),
    ({"query": QUERY}, "documents"),
    ({"query": "   \t\n", "documents": ["a"]}, "query"),
    ({"query": "", "documents": ["a"]}, "query"),
    ({"query": QUERY, "documents": []}, "documents"),
    ({"query": QUERY, "documents": "not a list"}, None),
    ({"query": QUERY, "documents": [1, 2]}, None),
    ({"query": QUERY, "documents": [None]}, None),
    ({"query": QUERY, "documents": [{"no_text": 1}]}, None),
    ({"query": 123, "documents": ["a"]}, "query"),
    ({"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
    ({"query": QUERY, "documents": ["a"], "top_n": -3}, "top_n"),
    ({"query": QUERY, "documents": ["a"], "top_n": "many"}, "top_n"),
    ({"query": QUERY, "documents": ["a"], "max_tokens_per_doc": 0}, "max_tokens_per_doc"),
    ({"query": QUERY, "documents": ["a"] * 101}, "documents"),  # over max_docs_per_request
    ({"query": "x" * 2001, "documents": ["a"]}, "query"),  # over max_query_chars
    ({"query": "word " * 600, "documents": ["a"]}, "query"),  # no room left for a document
    ({"query": QUERY, "documents": ["a"], "instruction": "  "}, "instruction"),
]


@pytest.mark.parametrize("body, param", BAD_BODIES)
def test_bad_rerank_bodies_get_400(base, body, param):
    r = httpx.post(f"{base}/v2/rerank", json=body, timeout=60)
    assert_error(r, 400, param)


def test_malformed_json_and_wrong_content(base):
    for raw in (b"{bad json", b"", b"[1, 2, 3]", b"null", b"\xff\xfe"):
        r = httpx.post(f"{base}/rerank", content=raw, headers={"content-type": "application/json"})
        assert_error(r, 400)


def test_body_over_the_size_limit_gets_413(base):
    r = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": ["x" * 300_000]})
    assert_error(r, 413)

    def chunks():  # no content-length: counted while streaming
        yield b'{"query": "q", "documents": ["'
        for _ in range(30):
            yield b"y" * 10_000
        yield b'"]}'

    r = httpx.post(f"{base}/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413)


def test_bad_score_bodies(base):
    for body in (
        {"queries": ["a", "b"], "documents": ["x", "y", "z"]},
        {"queries": QUERY},
        {"text_1": " ", "text_2": ["a"]},
        {"queries": [], "documents": []},
    ):
        assert_error(httpx.post(f"{base}/score", json=body), 400)


def test_bad_score_with_meta_bodies(base):
    for body in (
        {"query": QUERY, "docs": "abc"},
        {"query": QUERY, "docs": [{"a": 1}]},
        {"query": QUERY, "docs": ["a"], "normalize": "sometimes"},
        {"query": QUERY, "docs": ["a"], "unknown": 1},
    ):
        assert_error(httpx.post(f"{base}/v1/score_with_meta", json=body), 400)


def test_odd_text_gets_a_well_defined_result(base):
    docs = [
        "nul\x00byte",
        "\u202e right-to-left override",
        "zero\u200bwidth",
        "😀" * 500,
        "\ud7ff\ue000",
        "a" * 50_000,
        "   ",
        "Combining e\u0301",
    ]
    r = httpx.post(f"{base}/rerank", json={"query": "q\x00uery 🚀", "documents": docs}, timeout=120)
    assert r.status_code == 200, r.text
    scores = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert scores[6] == 0.0  # blank doc
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert r.json()["meta"]["truncated_docs"] >= 1  # the 50k-char doc


def test_unknown_route_and_method(base):
    assert_error(httpx.get(f"{base}/nope"), 404)
    assert_error(httpx.get(f"{base}/rerank"), 405)


def test_server_still_serves_after_all_that(base):
    r = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": ["Paris"]})
    assert r.status_code == 200
