"""A 500 names the request's id: the one in its x-request-id header and in the access log."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from fake_reranker_plugin import FlakyBackend
from server_helpers import running_server

BOOM = {"query": "__boom__", "documents": ["a"]}  # FlakyBackend raises RuntimeError on it


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_server(lambda: FlakyBackend({"model_name": "flaky"})) as url:
        yield url


@pytest.mark.parametrize(
    "path, body",
    [
        ("/rerank", BOOM),
        ("/v1/score", {"queries": "__boom__", "documents": ["a"]}),
        ("/v1/score_with_meta", {"query": "__boom__", "docs": ["a"]}),
    ],
)
def test_500_id_is_the_request_id(base, path, body, caplog):
    with caplog.at_level(logging.INFO, logger="reranker.service"):
        r = httpx.post(f"{base}{path}", json=body)  # no x-request-id sent
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        request_id = r.headers["x-request-id"]
        assert err["type"] == "server_error"
        assert err["id"] == request_id and request_id in err["message"]
        # The access line is written once the response has gone out: allow it a moment.
        deadline = time.monotonic() + 5.0
        while True:
            logged = [e.getMessage() for e in caplog.records if e.name == "reranker.service"]
            if any(f"{path} 500" in m and f"id={request_id}" in m for m in logged):
                break
            assert time.monotonic() < deadline, logged
            time.sleep(0.05)
    assert any(f"internal error {request_id}" in line for line in logged), logged


def test_500_id_is_the_client_request_id(base):
    r = httpx.post(f"{base}/rerank", json=BOOM, headers={"x-request-id": "client-42"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "client-42"
    assert r.json()["error"]["id"] == "client-42"
    ok = httpx.post(f"{base}/rerank", json={"query": "fine", "documents": ["abc"]})
    assert ok.status_code == 200  # the server lives on
