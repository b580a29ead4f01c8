"""Fair scheduling under load, on a real server (127.0.0.1) with the real tiny model:
a failing request fails alone, abandoned requests are not scored, large requests are
scored in pieces that small ones overtake, and a burst beyond capacity gets 429 with a
Retry-After instead of timeouts."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import httpx
import pytest
from fake_reranker_plugin import LengthBackend
from server_helpers import running_server

pytest.importorskip("transformers")

from reranker.backends.transformers.qwen3 import Qwen3TransformersBackend  # noqa: E402
from reranker.core.protocol import ScoreRequest  # noqa: E402
from reranker.service.scheduler import plan_pieces  # noqa: E402

MAX_CALL_TOKENS = 2048  # ~50 pieces for the large requests below


class MarkedBackend(Qwen3TransformersBackend):
    """The real backend, with markers in the query: ``__poison__`` makes the shared call
    raise (as a tokenizer error on bad text would); ``__gate__`` holds the call until
    ``gate`` is set; ``__slow__`` adds 20 ms to a call (a large request then lasts a
    second or more however fast the CPU). Records every query its calls scored."""

    gate = threading.Event()
    scored_queries: list[str] = []

    def _start_jobs(self, jobs):
        queries = [job.query for job in jobs]
        type(self).scored_queries.extend(queries)
        if "__gate__" in queries:
            assert self.gate.wait(60)
        if "__poison__" in queries:
            raise TypeError("the tokenizer choked on this text")
        if any(q.startswith("__slow__") for q in queries):
            time.sleep(0.02)
        return super()._start_jobs(jobs)


@contextmanager
def server(tiny_model_dir, **settings) -> Iterator[str]:
    def load():
        return MarkedBackend({"model_name": str(tiny_model_dir), "max_model_len": 512})

    options = {
        "max_call_tokens": MAX_CALL_TOKENS,
        "max_docs_per_request": 1000,
        "max_request_bytes": 2_000_000,
        "batch_wait_ms": 5,
        **settings,
    }
    with running_server(load, **options) as base:
        yield base


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> Iterator[str]:
    """A server cutting backend calls at MAX_CALL_TOKENS, warmed up."""
    with server(tiny_model_dir) as url:
        score(url, "warm up", ["a"])
        yield url


@pytest.fixture(autouse=True)
def closed_gate():
    MarkedBackend.gate.clear()
    MarkedBackend.scored_queries = []
    yield
    MarkedBackend.gate.set()


def metric(base: str, name: str) -> float:
    """A sample's value from /metrics: ``name`` with its labels, or the sum over them."""
    total = 0.0
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        sample = line.split(" ")[0]
        if sample == name or ("{" not in name and sample.split("{")[0] == name):
            total += float(line.split()[-1])
    return total


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def large(tag: str) -> list[str]:
    """400 documents of ~230 estimated tokens: ~50 pieces (score them with a query
    starting ``__slow__``: 1 s or more)."""
    return docs_of(400, tag)


def docs_of(n: int, tag: str, words: int = 40) -> list[str]:
    return [f"{tag} document {i}: " + "lorem ipsum dolor " * (words // 3 + i % 7) for i in range(n)]


def score(base: str, query: str, docs: list, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/score_with_meta", json={"query": query, "docs": docs}, timeout=timeout
    )


def test_a_failing_request_fails_alone(tiny_model_dir):
    """20 innocent requests share a backend call with one that makes it raise: 20 x 200
    with their own scores, 1 x 500."""
    with server(tiny_model_dir, max_call_tokens=100_000) as base:
        innocents = [(f"query {i} about cities", docs_of(3, f"c{i}")) for i in range(20)]
        with cf.ThreadPoolExecutor(22) as pool:
            expected = [
                r.json()["scores"] for r in pool.map(lambda qd: score(base, *qd), innocents)
            ]
            gate = pool.submit(score, base, "__gate__", ["held"])
            assert wait_for(lambda: "__gate__" in MarkedBackend.scored_queries)
            sent = [pool.submit(score, base, q, d) for q, d in innocents[:10]]
            poison = pool.submit(score, base, "__poison__", ["a", "b"])
            sent += [pool.submit(score, base, q, d) for q, d in innocents[10:]]
            assert wait_for(lambda: metric(base, "reranker_queue_documents") >= 62)
            MarkedBackend.gate.set()
            responses = [f.result() for f in sent]
            bad = poison.result()
            assert gate.result().status_code == 200
        assert [r.status_code for r in responses] == [200] * 20
        for r, scores in zip(responses, expected, strict=True):
            assert r.json()["scores"] == pytest.approx(scores, abs=1e-5)
        assert bad.status_code == 500 and bad.json()["error"]["type"] == "server_error"
        # They shared one call, then were re-scored in halves: ~2 log2(21) calls, not 21.
        assert metric(base, "reranker_isolation_retries_total") >= 4


def test_abandoned_requests_are_never_scored(tiny_model_dir):
    """A client that disconnects, and a request whose deadline passes, while queued behind
    a running call: neither is scored, and /metrics counts both drops."""
    with server(tiny_model_dir, request_timeout_s=1.5) as base:
        with cf.ThreadPoolExecutor(2) as pool:
            gate = pool.submit(score, base, "__gate__", ["held"])
            assert wait_for(lambda: "__gate__" in MarkedBackend.scored_queries)
            with pytest.raises(httpx.TimeoutException):
                score(base, "__gone__", docs_of(5, "gone"), timeout=0.3)  # hangs up
            late = score(base, "__late__", docs_of(5, "late"))  # waits its 1.5 s out
            assert late.status_code == 504
            MarkedBackend.gate.set()
            gate.result()
        assert wait_for(lambda: metric(base, "reranker_dropped_requests_total") > 0)
        assert wait_for(
            lambda: (
                metric(base, 'reranker_dropped_requests_total{reason="disconnected"}') == 1
                and metric(base, 'reranker_dropped_requests_total{reason="expired"}') == 1
            )
        )
        assert metric(base, 'reranker_dropped_documents_total{reason="disconnected"}') == 5
        assert "__gone__" not in MarkedBackend.scored_queries
        assert "__late__" not in MarkedBackend.scored_queries
        assert metric(base, "reranker_queue_chars") == 0
        assert score(base, "still works", ["a"]).status_code == 200


def test_a_disconnected_large_request_stops_within_a_piece(base):
    """A client hangs up on a ~50-piece request: it is dropped at the end of the piece
    being scored, and no later call scores any of it."""
    calls = metric(base, "reranker_batch_requests_count")
    with pytest.raises(httpx.TimeoutException):
        score(base, "__slow__ large request", large("gone"), timeout=0.5)
    assert wait_for(
        lambda: metric(base, 'reranker_dropped_requests_total{reason="disconnected"}') == 1
    )
    made = metric(base, "reranker_batch_requests_count") - calls
    time.sleep(0.5)
    assert metric(base, "reranker_batch_requests_count") - calls == made  # nothing since
    left = metric(base, 'reranker_dropped_documents_total{reason="disconnected"}')
    assert made < 40 and left >= 100  # much of it was never scored


def test_small_request_is_not_stuck_behind_a_large_one(base):
    """A 2-document request sent while a ~50-piece request is being scored is answered
    in about one piece's time, long before the large one."""
    with cf.ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        calls = metric(base, "reranker_batch_requests_count")
        big = pool.submit(
            lambda: (score(base, "__slow__ large", large("big"), 600), time.perf_counter())
        )
        assert wait_for(lambda: metric(base, "reranker_batch_requests_count") >= calls + 3)
        sent = time.perf_counter()
        small = score(base, "small", ["two documents", "only"])
        small_done = time.perf_counter()
        big_response, big_done = big.result()
    assert small.status_code == 200 and big_response.status_code == 200
    assert small_done < big_done
    assert small_done - sent < (big_done - start) / 3  # ~0.05 s of ~1.5 s on an idle CPU
    meta = big_response.json()["meta"]  # scored in pieces, put back together
    assert meta["input_docs"] == 400 and meta["usable_docs"] == 400


def test_large_request_in_pieces_scores_as_one_call(base, tiny_model_dir):
    """Cut into pieces, a request gets the scores and meta of one unsplit call."""
    docs = docs_of(150, "p") + [None, "", "p document 3: " + "lorem ipsum dolor " * 16]
    direct = Qwen3TransformersBackend({"model_name": str(tiny_model_dir), "max_model_len": 512})
    scores, meta = direct.score_with_meta("same query", docs)
    calls = metric(base, "reranker_batch_requests_count")
    r = score(base, "same query", docs)
    assert metric(base, "reranker_batch_requests_count") - calls >= 8
    assert r.json()["scores"] == pytest.approx(scores, abs=1e-5)
    for key in ("input_docs", "usable_docs", "unique_docs", "dedup_ratio", "scored_tokens"):
        assert r.json()["meta"][key] == meta[key], key


class AheadBackend(MarkedBackend):
    """The real backend as on a GPU, where a call returns once its batches are queued
    (``overlaps_calls``): the scheduler starts its next call before collecting this one.
    Logs each call's start and collection; ``__fault__`` fails a call when it is
    collected, as a fault on the device would."""

    events: ClassVar[list[str]] = []

    def __init__(self, options) -> None:
        super().__init__(options)
        self.overlaps_calls = True

    def _start_jobs(self, jobs):
        type(self).events.append("start")
        collect = super()._start_jobs(jobs)

        def collected():
            results = collect()
            type(self).events.append("collect")
            if "__fault__" in (job.query for job in jobs):
                raise RuntimeError("device fault")
            return results

        return collected


def test_calls_started_ahead_score_as_calls_made_one_at_a_time(tiny_model_dir):
    """With each call started before the one in flight is collected: a large request
    in pieces, small ones beside it and one whose call fails when collected. Every
    innocent request gets the scores of a direct call; the failing one alone a 500."""

    def load():
        return AheadBackend({"model_name": str(tiny_model_dir), "max_model_len": 512})

    AheadBackend.events = []
    direct = Qwen3TransformersBackend({"model_name": str(tiny_model_dir), "max_model_len": 512})
    big_docs = docs_of(150, "p")
    smalls = [(f"query {i} about towns", docs_of(3, f"s{i}")) for i in range(8)]
    with (
        running_server(load, max_call_tokens=MAX_CALL_TOKENS, batch_wait_ms=5) as base,
        cf.ThreadPoolExecutor(12) as pool,
    ):
        calls = metric(base, "reranker_batch_requests_count")
        big = pool.submit(score, base, "large query", big_docs)
        assert wait_for(lambda: metric(base, "reranker_batch_requests_count") >= calls + 2)
        gate = pool.submit(score, base, "__gate__", ["held"])  # holds the scheduler
        assert wait_for(lambda: "__gate__" in MarkedBackend.scored_queries)
        held = metric(base, "reranker_queue_documents")  # the large request's rest
        sent = [pool.submit(score, base, q, d) for q, d in smalls]
        fault = pool.submit(score, base, "__fault__", ["a", "b"])
        queued = held + 2 + 3 * len(smalls)
        assert wait_for(lambda: metric(base, "reranker_queue_documents") >= queued)
        MarkedBackend.gate.set()  # the rest share the next call, then are isolated
        responses = [f.result() for f in sent]
        bad, big_response = fault.result(), big.result()
        assert gate.result().status_code == 200
        assert metric(base, "reranker_isolation_retries_total") >= 1
        assert metric(base, "reranker_queue_chars") == 0
    assert big_response.status_code == 200
    # its pieces' times add up to no more than its wall time (twice it if each counted
    # from its start: a piece's call starts while the one before it runs)
    wall_ms = 1000 * big_response.elapsed.total_seconds()
    assert big_response.json()["meta"]["elapsed_ms"] <= wall_ms
    assert big_response.json()["scores"] == pytest.approx(
        direct.score("large query", big_docs), abs=1e-5
    )
    for r, (query, docs) in zip(responses, smalls, strict=True):
        assert r.status_code == 200
        assert r.json()["scores"] == pytest.approx(direct.score(query, docs), abs=1e-5)
    assert bad.status_code == 500
    # calls overlapped: somewhere a call started while the one before it was uncollected
    events = AheadBackend.events
    assert any(a == b == "start" for a, b in zip(events, events[1:], strict=False)), events


class SteadyBackend(LengthBackend):
    """Takes 3 ms a document, whatever else runs on the machine (it sleeps)."""

    name: ClassVar[str] = "fake_steady"

    def score_requests(self, requests):
        time.sleep(0.003 * sum(len(r.docs or []) for r in requests))
        return super().score_requests(requests)


def burst(base: str, n_docs: int, words: int = 40, clients: int = 12) -> list[httpx.Response]:
    with cf.ThreadPoolExecutor(clients) as pool:
        return list(
            pool.map(
                lambda i: score(base, f"burst {i}", docs_of(n_docs, f"b{i}", words)),
                range(clients),
            )
        )


def test_burst_beyond_capacity_gets_429_with_retry_after_not_timeouts():
    """12 requests of ~2.8 s of work each against a 4 s timeout: one fits; the rest are
    refused at once, instead of timing out, with the seconds until they would fit
    (~5.6 s of work - 4 s: Retry-After 2)."""
    load = lambda: SteadyBackend({"model_name": "steady"})  # noqa: E731
    with running_server(load, request_timeout_s=4.0, max_call_tokens=8192) as base:
        score(base, "warm up", ["a"])  # the first call is not timed
        score(base, "measure", docs_of(200, "w"))
        responses = burst(base, 930)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [429] * 11, [
        (r.status_code, r.elapsed.total_seconds(), r.headers.get("retry-after")) for r in responses
    ]
    refused = [r for r in responses if r.status_code == 429]
    # The first refusals wait behind the whole admitted request (Retry-After 2); on a busy
    # machine later ones can arrive when part of it is done (1).
    waits = [int(r.headers["retry-after"]) for r in refused]
    assert min(waits) >= 1 and max(waits) >= 2, waits
    assert all("longer than the 4 s timeout" in r.json()["error"]["message"] for r in refused)
    assert all(r.elapsed.total_seconds() < 2.0 for r in refused)  # refused at once


def test_burst_on_the_real_model_is_refused_rather_than_timed_out(tiny_model_dir):
    """The same with the tiny model: 12 requests of ~3.6 s of work (at the measured rate)
    against a 6 s timeout. A shared CPU's speed varies from call to call, so an admitted
    request may still time out; the rest are refused at once."""
    with server(tiny_model_dir, request_timeout_s=6.0) as base:
        score(base, "warm up", ["a"])  # the first call pays the warm-up and is not timed
        for k in range(3):
            score(base, "measure", docs_of(60, f"w{k}"))
        rate = metric(base, "reranker_backend_tokens_per_second")
        assert rate > 0
        instruction = Qwen3TransformersBackend.Options.model_validate({}).instruction
        request = ScoreRequest("burst 0", docs_of(100, "b", 150))
        per_doc = sum(p.cost for p in plan_pieces(request, 10**9, 512, instruction)[0]) / 100
        responses = burst(base, min(1000, int(3.6 * rate / per_doc)), 150)
    statuses = [r.status_code for r in responses]
    assert statuses.count(429) >= 8 and statuses.count(504) <= 2
    retry_after = [int(r.headers["retry-after"]) for r in responses if r.status_code == 429]
    assert min(retry_after) >= 1 and max(retry_after) >= 2
