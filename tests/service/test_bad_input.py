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


DOC_RULE = "must be a string or an object with a text field"


@pytest.mark.parametrize(
    "documents, where",
    [
        ([3], "documents[0]"),
        (["a", 2.5], "documents[1]"),
        (["a", "b", True], "documents[2]"),
        ([None], "documents[0]"),
        ([{"text": 3}], "documents[0]"),
        ([{"no_text": "a"}], "documents[0]"),
        ([["a"]], "documents[0]"),
    ],
)
def test_rerank_documents_must_be_text(base, documents, where):
    r = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": documents})
    err = assert_error(r, 400, where)
    assert err["message"] == f"{where}: {DOC_RULE}"


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
@pytest.mark.parametrize("field", ["documents", "text_2"])
def test_score_documents_must_be_text(base, path, field):
    query_field = "queries" if field == "documents" else "text_1"
    body = {query_field: QUERY, field: ["a", 7]}
    err = assert_error(httpx.post(f"{base}{path}", json=body), 400, f"{field}[1]")
    assert err["message"] == f"{field}[1]: {DOC_RULE}"
    queries = {"queries": ["a", 3], "documents": ["x", "y"]}
    err = assert_error(httpx.post(f"{base}{path}", json=queries), 400, "queries[1]")
    assert err["message"] == "queries[1]: Input should be a valid string"


@pytest.mark.parametrize("doc", [3, 4.5, True, False, {"text": "a"}, ["a"]])
def test_score_with_meta_documents_must_be_strings_or_null(base, doc):
    body = {"query": QUERY, "docs": ["a", None, doc]}
    err = assert_error(httpx.post(f"{base}/v1/score_with_meta", json=body), 400, "docs[2]")
    assert err["message"] == "docs[2]: must be a string or null"


def test_score_with_meta_null_and_blank_docs_score_zero(base):
    r = httpx.post(
        f"{base}/v1/score_with_meta", json={"query": QUERY, "docs": ["Paris", None, "", "  "]}
    )
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert scores[1:] == [0.0, 0.0, 0.0] and 0.0 < scores[0] <= 1.0


def test_messages_name_fields_not_pydantic_branches(base):
    """No union branch names (``str``, ``DocumentObject``, ``list[str]``) in any message."""
    cases = [
        ("/rerank", {"query": QUERY, "documents": [3]}),
        ("/rerank", {"query": QUERY, "documents": [{"text": 3}]}),
        ("/rerank", {"query": QUERY, "documents": ["a"], "top_n": "many"}),
        ("/score", {"queries": [3], "documents": ["a"]}),
        ("/score", {"queries": QUERY, "documents": [{"text": None}]}),
        ("/score", {"queries": QUERY, "documents": 3}),
        ("/v1/score_with_meta", {"query": 3, "docs": ["a"]}),
        ("/v1/score_with_meta", {"query": QUERY, "docs": [1]}),
    ]
    for path, body in cases:
        err = assert_error(httpx.post(f"{base}{path}", json=body), 400)
        for branch in ("DocumentObject", "list[", "union[", ".str", ".int", ".0"):
            assert branch not in err["message"], (path, body, err)
            assert branch not in (err["param"] or ""), (path, body, err)
    err = assert_error(httpx.post(f"{base}/score", json=cases[3][1]), 400, "queries[0]")
    assert err["message"] == "queries[0]: Input should be a valid string"
    err = assert_error(httpx.post(f"{base}/rerank", json=cases[2][1]), 400, "top_n")
    assert err["message"].startswith("top_n: ")


JSON_BODY = b'{"query": "q", "documents": ["a"]}'
NOT_JSON = "request body must be JSON (content-type: application/json)"


@pytest.mark.parametrize("path", ["/rerank", "/score", "/v1/score_with_meta"])
@pytest.mark.parametrize(
    "headers",
    [
        {},  # no content-type at all
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},  # what curl -d sends
        {"content-type": "multipart/form-data; boundary=x"},
    ],
)
def test_body_without_a_json_content_type_says_so(base, path, headers):
    r = httpx.post(f"{base}{path}", content=JSON_BODY, headers=headers)
    err = assert_error(r, 400)
    assert err["message"] == NOT_JSON and err["type"] == "invalid_request_error"


def test_json_content_type_variants_are_accepted(base):
    for kind in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        r = httpx.post(f"{base}/rerank", content=JSON_BODY, headers={"content-type": kind})
        assert r.status_code == 200, (kind, r.text)


def test_json_that_is_not_an_object_says_so(base):
    json_type = {"content-type": "application/json"}
    for raw in (b"[1, 2, 3]", b"null", b'"text"', b"3"):
        err = assert_error(httpx.post(f"{base}/rerank", content=raw, headers=json_type), 400)
        assert err["message"] == "request body must be a JSON object", raw
    err = assert_error(httpx.post(f"{base}/rerank", content=b"", headers=json_type), 400)
    assert err["message"] == "request body is empty: send a JSON object"
    err = assert_error(httpx.post(f"{base}/rerank", content=b"{bad", headers=json_type), 400)
    assert err["message"] == "request body is not valid JSON"


def test_server_still_serves_after_all_that(base):
    r = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": ["Paris"]})
    assert r.status_code == 200
