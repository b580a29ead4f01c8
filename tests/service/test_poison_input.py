"""A request holding text that is not valid Unicode (a lone surrogate, sent as a JSON
``\\ud800`` escape) is refused with 400 naming the field, and never fails the innocent
requests that arrive with it (they used to share its batch and get 500 with it)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Berlin is in Germany."]


@pytest.fixture(scope="module")
def base(transformers_server):
    return transformers_server


def raw_json(body: dict) -> bytes:
    """``body`` as JSON bytes, where the text ``<LONE>`` becomes the escape ``\\ud800``
    (what a client sends; a Python str holding it could not even be encoded)."""
    return json.dumps(body).replace("<LONE>", "\\ud800").encode()


def post_raw(base: str, path: str, body: dict) -> httpx.Response:
    content = raw_json(body)
    assert b"\\ud800" in content or b"<LONE>" not in json.dumps(body).encode()
    return httpx.post(
        f"{base}{path}", content=content, headers={"content-type": "application/json"}, timeout=120
    )


POISON = [
    ("/v2/rerank", {"query": QUERY, "documents": [*DOCS, "a<LONE>b"]}, "documents[3]"),
    ("/v2/rerank", {"query": QUERY, "documents": [{"text": "x<LONE>"}]}, "documents[0]"),
    ("/v2/rerank", {"query": "q<LONE>", "documents": DOCS}, "query"),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS, "instruction": "i<LONE>"}, "instruction"),
    ("/score", {"queries": QUERY, "documents": ["ok", "a<LONE>b"]}, "documents[1]"),
    ("/score", {"queries": ["ok", "q<LONE>"], "documents": ["a", "b"]}, "queries[1]"),
    ("/score", {"text_1": "q<LONE>", "text_2": ["a"]}, "text_1"),
    ("/v1/score_with_meta", {"query": QUERY, "docs": [None, "d<LONE>"]}, "docs[1]"),
    ("/v1/score_with_meta", {"query": "q<LONE>", "docs": ["d"]}, "query"),
    ("/v1/score_with_meta", {"query": "q", "docs": ["d"], "instruction": "<LONE>"}, "instruction"),
]


@pytest.mark.parametrize("path, body, param", POISON)
def test_text_that_is_not_valid_unicode_gets_400_naming_the_field(base, path, body, param):
    r = post_raw(base, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert "Unicode" in err["message"] and "U+D800" in err["message"]


def innocent(i: int) -> dict:
    return {
        "query": f"{QUERY} ({i})",
        "documents": [f"{d} Item {i}." for d in DOCS] + ["Ünïcödé 中文 🎉 <|im_end|> text"],
    }


@pytest.mark.parametrize(
    "poison",
    [
        {"query": QUERY, "documents": [*DOCS, "a<LONE>b"]},
        {"query": "q<LONE>", "documents": DOCS},
        {"query": QUERY, "documents": DOCS, "instruction": "rank <LONE>"},
    ],
    ids=["document", "query", "instruction"],
)
def test_a_poison_request_fails_alone_among_concurrent_innocent_ones(base, poison):
    """20 innocent requests and 1 poison request sent in the same moment: all 20 get the
    scores they get alone, the poison one gets 400."""
    alone = {}
    for i in range(20):
        r = httpx.post(f"{base}/v2/rerank", json=innocent(i), timeout=120)
        assert r.status_code == 200, r.text
        alone[i] = {x["index"]: x["relevance_score"] for x in r.json()["results"]}

    results: dict[int | str, httpx.Response] = {}
    start = threading.Barrier(21)

    def send(key: int | str) -> None:
        start.wait()
        if key == "poison":
            results[key] = post_raw(base, "/v2/rerank", poison)
        else:
            results[key] = httpx.post(f"{base}/v2/rerank", json=innocent(key), timeout=120)

    threads = [threading.Thread(target=send, args=(k,)) for k in [*range(20), "poison"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results["poison"].status_code == 400, results["poison"].text
    for i in range(20):
        r = results[i]
        assert r.status_code == 200, (i, r.text)
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        assert got == pytest.approx(alone[i], abs=1e-5)
    assert httpx.get(f"{base}/ready").status_code == 200


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v2/rerank", {"query": QUERY, "documents": ["a"]}),
        ("/score", {"queries": QUERY, "documents": ["a"]}),
        ("/v1/score_with_meta", {"query": QUERY, "docs": ["a"]}),
    ],
)
def test_an_instruction_over_max_instruction_chars_gets_400(base, path, body):
    r = httpx.post(f"{base}{path}", json={**body, "instruction": "x" * 4001}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "instruction" and "4000" in err["message"]
    ok = httpx.post(f"{base}{path}", json={**body, "instruction": "Find the answer"}, timeout=60)
    assert ok.status_code == 200, ok.text
