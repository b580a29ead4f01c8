"""The API pages (/docs, /redoc) work offline: every script, style and icon they load is
served by this server, without the API key, under one metrics label."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fake_reranker_plugin import FlakyBackend
from server_helpers import running_server

KEY = "s3cret"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """A real server with an API key, so the pages and assets prove to be open."""
    with running_server(lambda: FlakyBackend({"model_name": "flaky"}), api_key=KEY) as url:
        yield url


def referenced_urls(html: str) -> dict[str, list[str]]:
    """The ``src`` of each script and the ``href`` of each link element of a page."""
    return {
        "script": re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)[\"']", html, re.I),
        "link": re.findall(r"<link[^>]*\bhref=[\"']([^\"']+)[\"']", html, re.I),
    }


def fetch_assets(base: str, page: str) -> dict[str, httpx.Response]:
    """GET ``page`` (no API key); check it names no outside URL; GET each URL it names."""
    r = httpx.get(f"{base}{page}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    urls = referenced_urls(r.text)
    assert urls["script"], f"{page} loads no script"
    everything = urls["script"] + urls["link"]
    outside = [u for u in everything if re.match(r"(https?:)?//", u, re.I)]
    assert not outside, f"{page} loads {outside} from outside this server"
    assert not re.search(r"https?://", r.text), "the page names an outside URL"
    answers = {}
    for url in everything:
        assert url.startswith("/"), url
        answer = httpx.get(f"{base}{url}")
        assert answer.status_code == 200, (url, answer.status_code)
        assert answer.content, f"{url} is empty"
        answers[url] = answer
    return answers


def test_docs_page_loads_swagger_ui_from_this_server(base):
    answers = fetch_assets(base, "/docs")
    js = [a for u, a in answers.items() if u.endswith(".js")]
    css = [a for u, a in answers.items() if u.endswith(".css")]
    assert len(js) == 1 and len(css) == 1
    assert "javascript" in js[0].headers["content-type"]
    assert b"SwaggerUIBundle" in js[0].content and len(js[0].content) > 100_000
    assert css[0].headers["content-type"].startswith("text/css")
    assert b".swagger-ui" in css[0].content
    # The spec the page reads is served too, without the key.
    assert httpx.get(f"{base}/openapi.json").json()["paths"]["/v2/rerank"]


def test_redoc_page_loads_redoc_from_this_server(base):
    answers = fetch_assets(base, "/redoc")
    js = [a for u, a in answers.items() if u.endswith(".js")]
    assert len(js) == 1 and b"Redoc" in js[0].content
    assert "javascript" in js[0].headers["content-type"]
    assert "fonts.googleapis" not in httpx.get(f"{base}/redoc").text


def test_assets_share_one_metrics_label_and_the_api_still_needs_the_key(base):
    stray = f"/docs/assets/no-such-{uuid.uuid4().hex}.js"
    assert httpx.get(f"{base}{stray}").status_code == 404
    assert httpx.get(f"{base}/docs/assets/swagger-ui.css").status_code == 200
    unknown = f"/no-such-route-{uuid.uuid4().hex}"
    assert httpx.get(f"{base}{unknown}").status_code == 401  # keyed: refused before routing
    body = {"query": "q", "documents": ["a"]}
    assert httpx.post(f"{base}/rerank", json=body).status_code == 401
    text = httpx.get(f"{base}/metrics").text
    assert 'route="/docs/assets",status="200"' in text
    assert 'route="/docs/assets",status="404"' in text
    assert 'route="other",status="401"' in text
    assert 'route="/rerank",status="401"' in text
    assert "no-such" not in text  # no label per path asked
