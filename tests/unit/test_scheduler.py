"""The service's scheduler: pieces, merging, fairness, drops, isolation, admission."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import pytest

from reranker.core.errors import InvalidRequest, Overloaded
from reranker.core.protocol import RerankBackend, ScoreRequest
from reranker.service.scheduler import BatchScheduler, RequestExpired, plan_pieces

sys.path.insert(0, str(Path(__file__).parent / "fake_plugin"))
from fake_reranker_plugin import LengthBackend  # noqa: E402


class RecordingBackend(LengthBackend):
    """Scores by length; records each call's queries; can be held, slowed or made to fail.

    Query ``__boom__`` raises from the call; ``__bad__`` raises an input error naming its
    second document; ``__gate__`` blocks the call until ``gate`` is set.
    """

    name: ClassVar[str] = "fake_recording"

    def __init__(self, options=None, seconds_per_doc: float = 0.0) -> None:
        super().__init__(options or {"model_name": "fake"})
        self.call_log: list[list[str]] = []
        self.gate = threading.Event()
        self.seconds_per_doc = seconds_per_doc

    def score_requests(self, requests):
        self.call_log.append([str(r.query) for r in requests])
        if any(r.query == "__gate__" for r in requests):
            assert self.gate.wait(30)
        if any(r.query == "__boom__" for r in requests):
            raise RuntimeError("backend exploded")
        if self.seconds_per_doc:
            time.sleep(self.seconds_per_doc * sum(len(r.docs or []) for r in requests))
        return super().score_requests(requests)

    def _score_pairs(self, query, docs, instruction, max_doc_tokens):
        if query == "__bad__":
            raise InvalidRequest("docs[1]: cannot be scored", param="docs[1]")
        return super()._score_pairs(query, docs, instruction, max_doc_tokens)


def scheduler(backend: RerankBackend, **kw) -> BatchScheduler:
    return BatchScheduler(backend, batch_wait_ms=kw.pop("batch_wait_ms", 0), **kw)


def test_small_request_is_one_piece_and_a_large_one_is_cut_by_cost():
    small = ScoreRequest("q", ["a", "b"])
    pieces, chars = plan_pieces(small, 1000, 4096)
    assert len(pieces) == 1 and pieces[0].request is small and chars > 2
    docs = [f"document {i} " + "x" * (i * 30) for i in range(100)]
    pieces, _ = plan_pieces(ScoreRequest("q", docs), 1000, 4096)
    assert len(pieces) > 5
    assert all(p.cost <= 1000 or p.docs == 1 for p in pieces)
    assert sorted(i for p in pieces for i in p.positions) == list(range(100))


def test_a_document_costs_at_most_max_model_len():
    huge = ScoreRequest("q", ["word " * 1_000_000])
    pieces, chars = plan_pieces(huge, 131072, 4096)
    assert pieces[0].cost == 4096 and chars > 5_000_000


def test_duplicates_share_a_piece_and_unusable_docs_go_to_the_first():
    docs = ["same text " * 50, None, "other " * 60, " same text " * 50, "", "third " * 70]
    docs[3] = docs[0]
    pieces, _ = plan_pieces(ScoreRequest("q", docs), 200, 4096)
    assert len(pieces) == 3
    where = {i: k for k, p in enumerate(pieces) for i in p.positions}
    assert where[0] == where[3] and where[1] == 0 and where[4] == 0


def test_split_request_gets_the_scores_and_meta_of_an_unsplit_one():
    backend = RecordingBackend()
    docs = [f"doc {i} " + "y" * (i % 13 * 40) for i in range(60)] + [None, "", "doc 3 "]
    direct = backend.score_with_meta("query", docs)
    s = scheduler(backend, max_call_tokens=600)
    try:
        backend.call_log.clear()
        scores, meta = s.submit(ScoreRequest("query", docs)).result(10)
    finally:
        s.close(5)
    assert len(backend.call_log) > 3  # scored in pieces
    assert (s.queued_docs, s.queued_tokens, s.queued_chars) == (0, 0, 0)
    assert scores == direct[0]
    for key in ("input_docs", "usable_docs", "unique_docs", "dedup_ratio", "truncated_docs"):
        assert meta[key] == direct[1][key], key


def test_input_error_of_a_piece_names_the_document_in_the_whole_request():
    backend = RecordingBackend()
    s = scheduler(backend, max_call_tokens=800)
    try:
        docs = ["d" * (900 - 60 * i) for i in range(10)]  # shortest first: the last ones
        with pytest.raises(InvalidRequest) as err:
            s.submit(ScoreRequest("__bad__", docs)).result(10)
    finally:
        s.close(5)
    pieces, _ = plan_pieces(ScoreRequest("__bad__", docs), 800, 4096, backend.default_instruction())
    where = pieces[0].positions[1]  # the piece's docs[1]
    assert where > 1 and err.value.param == f"docs[{where}]"
    assert str(err.value).startswith(f"docs[{where}]:")


def test_failing_request_is_isolated_from_the_others_in_its_call():
    backend = RecordingBackend()
    isolated = []
    s = scheduler(backend, on_isolate=lambda: isolated.append(1))
    try:
        blocker = s.submit(ScoreRequest("__gate__", ["x"]))
        time.sleep(0.1)  # the worker holds the gate; the rest queue into one call
        futures = [s.submit(ScoreRequest(f"q{i}", ["abc", "de"])) for i in range(10)]
        bad = s.submit(ScoreRequest("__boom__", ["a"]))
        futures += [s.submit(ScoreRequest(f"r{i}", ["abc"])) for i in range(10)]
        backend.gate.set()
        blocker.result(10)
        for f in futures:
            assert len(f.result(10)[0]) in (1, 2)
        with pytest.raises(RuntimeError, match="exploded"):
            bad.result(10)
    finally:
        s.close(5)
    assert len(backend.call_log[1]) == 21 and isolated  # they shared a call, then were split
    assert len(backend.call_log) <= 2 + 2 * 6  # bisection: O(log n) calls, not 21


def test_a_dead_backend_fails_the_call_without_bisecting():
    class Dead(RecordingBackend):
        def health(self):
            return "the engine is gone"

    backend = Dead()
    s = scheduler(backend)
    try:
        blocker = s.submit(ScoreRequest("__gate__", ["x"]))
        time.sleep(0.1)
        futures = [s.submit(ScoreRequest("__boom__", ["a"])) for _ in range(8)]
        backend.gate.set()
        blocker.result(10)
        for f in futures:
            with pytest.raises(RuntimeError):
                f.result(10)
    finally:
        s.close(5)
    assert len(backend.call_log) == 2


def test_cancelled_and_expired_requests_are_never_scored():
    backend = RecordingBackend()
    drops = []
    s = scheduler(backend, on_drop=lambda reason, docs: drops.append((reason, docs)))
    try:
        blocker = s.submit(ScoreRequest("__gate__", ["x"]))
        time.sleep(0.1)
        gone = s.submit(ScoreRequest("gone", ["a", "b", "c"]))
        late = s.submit(ScoreRequest("late", ["a"]), timeout_s=0.05)
        kept = s.submit(ScoreRequest("kept", ["a"]))
        assert gone.cancel_for("disconnected")
        time.sleep(0.1)
        backend.gate.set()
        blocker.result(10)
        assert kept.result(10)[0]
        with pytest.raises(RequestExpired):
            late.result(10)
    finally:
        s.close(5)
    queries = {q for call in backend.call_log for q in call}
    assert "gone" not in queries and "late" not in queries
    assert sorted(drops) == [("disconnected", 3), ("expired", 1)]
    assert (s.queued_docs, s.queued_tokens, s.queued_chars) == (0, 0, 0)


def test_no_call_is_made_when_every_waiting_request_was_abandoned():
    backend = RecordingBackend()
    s = scheduler(backend)
    try:
        blocker = s.submit(ScoreRequest("__gate__", ["x"]))
        time.sleep(0.1)
        s.submit(ScoreRequest("gone", ["a"])).cancel_for("disconnected")
        backend.gate.set()
        blocker.result(10)
        time.sleep(0.1)
    finally:
        s.close(5)
    assert backend.call_log == [["__gate__"]]


def test_small_request_takes_turns_with_a_large_one():
    backend = RecordingBackend(seconds_per_doc=0.005)
    s = scheduler(backend, max_call_tokens=300)
    try:
        big = s.submit(ScoreRequest("big", [f"document number {i} " * 20 for i in range(100)]))
        time.sleep(0.05)
        calls_then = len(backend.call_log)
        small = s.submit(ScoreRequest("small", ["a", "b"]))
        small.result(10)
        assert not big.done()
        big.result(30)
    finally:
        s.close(5)
    first_small = next(k for k, call in enumerate(backend.call_log) if "small" in call)
    assert first_small <= calls_then + 1  # behind at most the piece in flight


def test_small_request_goes_before_many_medium_ones_queued_earlier():
    """16 one-piece requests queued, then a 2-document one: fair queuing scores it next,
    not after the 15 still waiting."""
    backend = RecordingBackend(seconds_per_doc=0.002)
    s = scheduler(backend, max_call_tokens=3000)
    try:
        medium = [f"document number {i} " * 20 for i in range(12)]  # ~2,500 tokens
        futures = [s.submit(ScoreRequest(f"m{k}", medium)) for k in range(16)]
        time.sleep(0.01)
        calls_then = len(backend.call_log)
        s.submit(ScoreRequest("small", ["a", "b"])).result(10)
        first_small = next(k for k, call in enumerate(backend.call_log) if "small" in call)
        assert first_small <= calls_then + 1
        assert sum(not f.done() for f in futures) >= 10
        for f in futures:
            f.result(10)
        # A large request is not starved by a stream of small ones.
        big = s.submit(ScoreRequest("big", [f"d{i} " + "x" * 900 for i in range(40)]))
        smalls = []
        while not big.done():
            smalls.append(s.submit(ScoreRequest("s", [f"{len(smalls)}"])))
            time.sleep(0.002)
            assert len(smalls) < 5000
        big.result(1)
    finally:
        s.close(5)


def test_queue_is_bounded_by_estimated_tokens_and_by_characters():
    backend = RecordingBackend()
    s = scheduler(backend, max_queue_tokens=5000, max_queue_chars=200_000)
    try:
        blocker = s.submit(ScoreRequest("__gate__", ["x"]))
        time.sleep(0.1)
        s.submit(ScoreRequest("q", ["w" * 3000] * 3 + [f"{i}" * 3000 for i in range(3)]))
        with pytest.raises(Overloaded, match="estimated tokens"):
            s.submit(ScoreRequest("q", [f"{i}" * 3000 for i in range(3)]))
        with pytest.raises(Overloaded, match="characters"):
            s.submit(ScoreRequest("", ["z" * 190_000]))  # a blank query: costs no tokens
        assert s.queued_tokens <= 5000 and s.queued_chars <= 200_000
        backend.gate.set()
        blocker.result(10)
    finally:
        s.close(5)


def test_wait_longer_than_the_timeout_is_refused_with_an_honest_retry_after():
    backend = RecordingBackend(seconds_per_doc=0.01)  # ~20,000 estimated tokens/s
    s = scheduler(backend, max_call_tokens=4000)
    try:
        s.submit(ScoreRequest("first", ["a"])).result(10)  # warm-up: not measured
        assert s.tokens_per_second is None
        s.submit(ScoreRequest("warm", [f"a{i}" + "a" * 300 for i in range(20)])).result(10)
        rate = s.tokens_per_second
        assert rate and 10_000 < rate < 30_000
        docs = [f"b{i}" + "b" * 300 for i in range(200)]  # 2 s of work each
        first = s.submit(ScoreRequest("first", docs), timeout_s=2.5)
        time.sleep(0.1)  # its first piece is being scored: the rest still counts
        with pytest.raises(Overloaded, match="longer than the 2.5 s timeout") as err:
            s.submit(ScoreRequest("second", docs), timeout_s=2.5)
        # 4 s of work for 2.5 s of patience: admissible in about 1.5 s.
        assert 1.0 < err.value.retry_after < 2.5
        assert s.submit(ScoreRequest("small", ["c"]), timeout_s=2.5).result(5)
        first.cancel_for("cancelled")
    finally:
        s.close(5)


class Fatal(BaseException):
    """Raised by a backend: not an ``Exception`` (as ``CancelledError`` is not)."""


class DeviceBackend(RecordingBackend):
    """A backend whose calls run on a "device" thread, one after another, as a GPU
    backend's do: ``start_requests`` returns once the call is queued there and collecting
    waits for it. Records when each call was started and collected; ``__boom__`` fails on
    the device (the error surfaces when the call is collected), ``__gate__`` holds it."""

    name: ClassVar[str] = "fake_device"
    overlaps_calls = True

    def __init__(self, seconds_per_call: float = 0.02) -> None:
        super().__init__()
        self.seconds_per_call = seconds_per_call
        self.device = ThreadPoolExecutor(1)
        self.events: list[tuple[str, tuple[str, ...]]] = []

    def start_requests(self, requests):
        queries = tuple(str(r.query) for r in requests)
        self.events.append(("start", queries))
        if "__poison__" in queries:  # fails as it starts (as a tokenizer error would)
            raise TypeError("cannot tokenise this")
        if "__fatal__" in queries:
            raise Fatal("not an Exception")

        def run():
            self.call_log.append(list(queries))
            if "__gate__" in queries:
                assert self.gate.wait(30)
            time.sleep(self.seconds_per_call)
            if "__boom__" in queries:
                raise RuntimeError("device fault")
            return RerankBackend.start_requests(self, requests)()

        queued = self.device.submit(run)

        def collect():
            try:
                return queued.result()
            finally:
                self.events.append(("collect", queries))

        return collect


def started_before_collected(events) -> list[bool]:
    """For each call but the last: whether the next call was started before it was
    collected."""
    starts = [k for k, (what, _) in enumerate(events) if what == "start"]
    collects = [k for k, (what, _) in enumerate(events) if what == "collect"]
    return [starts[n + 1] < collects[n] for n in range(len(starts) - 1)]


@pytest.mark.parametrize("overlap", [True, False])
def test_next_call_starts_while_the_device_runs_the_current_one(overlap):
    backend = DeviceBackend()
    docs = [f"doc {i} " + "y" * (i % 13 * 40) for i in range(60)]
    direct = backend.score_with_meta("query", docs)
    s = scheduler(backend, max_call_tokens=600, overlap_calls=overlap)
    try:
        backend.events.clear()
        scores, meta = s.submit(ScoreRequest("query", docs)).result(10)
    finally:
        s.close(5)
    assert s.overlap is overlap
    overlapped = started_before_collected(backend.events)
    assert len(overlapped) > 3  # scored in pieces
    # with overlap, a split request's next piece is queued before the current one is read
    assert overlapped == [overlap] * len(overlapped)
    assert scores == direct[0] and meta["unique_docs"] == direct[1]["unique_docs"]
    assert (s.queued_docs, s.queued_tokens, s.queued_chars) == (0, 0, 0)


def test_device_fault_fails_only_its_request_while_the_next_call_runs():
    backend = DeviceBackend()
    isolated = []
    s = scheduler(backend, max_call_tokens=600, on_isolate=lambda: isolated.append(1))
    try:
        blocker = s.submit(ScoreRequest("__gate__", ["x"]))
        time.sleep(0.1)  # the device holds the gate; the rest queue up behind it
        docs = [f"doc {i} " + "y" * (i % 13 * 40) for i in range(60)]
        big = s.submit(ScoreRequest("big", docs))
        bad = s.submit(ScoreRequest("__boom__", ["a"]))
        bad_big = s.submit(ScoreRequest("__boom__", docs))  # fails at its first piece
        small = [s.submit(ScoreRequest(f"q{i}", ["abc", "de"])) for i in range(5)]
        backend.gate.set()
        blocker.result(10)
        assert big.result(10)[0] == backend.score("big", docs)
        for f in small:
            assert len(f.result(10)[0]) == 2
        for f in (bad, bad_big):
            with pytest.raises(RuntimeError, match="device fault"):
                f.result(10)
    finally:
        s.close(5)
    assert isolated
    assert any(started_before_collected(backend.events))
    assert (s.queued_docs, s.queued_tokens, s.queued_chars) == (0, 0, 0)
    assert s.queued_requests == 0


@pytest.mark.parametrize("overlap", [False, True])
def test_abandoned_large_request_stops_within_the_pieces_in_flight(overlap):
    backend = DeviceBackend(seconds_per_call=0.03)
    drops = []
    s = scheduler(
        backend,
        max_call_tokens=300,
        overlap_calls=overlap,
        on_drop=lambda r, d: drops.append((r, d)),
    )
    try:
        docs = [f"document number {i} " * 20 for i in range(100)]
        pieces = len(plan_pieces(ScoreRequest("q", docs), 300, 4096)[0])
        future = s.submit(ScoreRequest("q", docs))
        time.sleep(0.1)
        future.cancel_for("disconnected")
        events_then = len(backend.events)
        time.sleep(0.5)
    finally:
        s.close(5)
    starts_after = [e for e in backend.events[events_then:] if e[0] == "start"]
    assert pieces >= 20
    assert len(starts_after) <= 1  # one taken before the scheduler saw the cancel
    assert drops == [("disconnected", drops[0][1])] and drops[0][1] >= 80
    assert (s.queued_docs, s.queued_tokens, s.queued_chars) == (0, 0, 0)


def test_estimated_wait_counts_the_call_queued_ahead_from_when_the_device_takes_it():
    """Two one-call requests: the second call is started (queued on the device) while the
    first runs. Once the first is collected, the second still has its whole device time
    ahead of it: a request whose timeout is shorter than that is refused."""
    backend = DeviceBackend(seconds_per_call=0.6)
    docs = ["w" * 1500]  # ~600 estimated tokens: one call each
    s = scheduler(backend, max_call_tokens=600)
    try:
        s.submit(ScoreRequest("first", ["a"])).result(10)  # warm-up: not measured
        s.submit(ScoreRequest("measured", docs)).result(10)
        assert s.tokens_per_second
        a = s.submit(ScoreRequest("a", docs))
        b = s.submit(ScoreRequest("b", docs))
        collected = lambda: ("collect", ("a",)) in backend.events  # noqa: E731
        deadline = time.monotonic() + 10
        while not collected() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert collected() and ("start", ("b",)) in backend.events
        time.sleep(0.1)  # b has run ~0.1 s of its 0.6 s
        with pytest.raises(Overloaded, match="longer than the 0.3 s timeout"):
            s.submit(ScoreRequest("late", ["c"]), timeout_s=0.3)
        a.result(10), b.result(10)
    finally:
        s.close(5)


def test_close_finishes_the_calls_in_flight_and_the_queue():
    backend = DeviceBackend(seconds_per_call=0.05)
    docs = [f"doc {i} " + "y" * (i % 13 * 40) for i in range(60)]
    s = scheduler(backend, max_call_tokens=600)
    big = s.submit(ScoreRequest("big", docs))
    small = s.submit(ScoreRequest("small", ["a", "b"]))
    time.sleep(0.08)  # calls in flight
    s.close(30)
    assert not s._worker.is_alive()
    assert big.result(0)[0] == backend.score("big", docs) and len(small.result(0)[0]) == 2
    with pytest.raises(Overloaded, match="shutting down"):
        s.submit(ScoreRequest("after", ["a"]))


def test_request_expiring_while_its_piece_is_in_flight_is_dropped_once():
    backend = DeviceBackend(seconds_per_call=0.05)
    drops = []
    s = scheduler(backend, max_call_tokens=300, on_drop=lambda r, d: drops.append((r, d)))
    try:
        docs = [f"document number {i} " * 20 for i in range(40)]
        late = s.submit(ScoreRequest("q", docs), timeout_s=0.2)
        with pytest.raises(RequestExpired):
            late.result(10)
        time.sleep(0.2)  # the pieces in flight then are collected and ignored
        assert s.submit(ScoreRequest("next", ["a"])).result(10)
    finally:
        s.close(5)
    assert len(drops) == 1 and drops[0][0] == "expired" and 0 < drops[0][1] < 40
    assert (s.queued_docs, s.queued_tokens, s.queued_chars) == (0, 0, 0)


@pytest.mark.parametrize("overlap", [True, False])
def test_a_backend_raising_a_base_exception_fails_the_call_not_the_scheduler(overlap):
    backend = DeviceBackend()
    s = scheduler(backend, overlap_calls=overlap)
    try:
        with pytest.raises(Fatal):
            s.submit(ScoreRequest("__fatal__", ["a"])).result(10)
        assert s.submit(ScoreRequest("after", ["a", "b"])).result(10)
    finally:
        s.close(5)
    assert (s.queued_docs, s.queued_tokens, s.queued_chars) == (0, 0, 0)


def test_a_call_that_fails_to_start_is_isolated_before_the_next_is_started():
    """A split request whose first piece fails as its call starts: it gets the error, and
    none of its other pieces is started (no call is started behind a failed start)."""
    backend = DeviceBackend()
    docs = [f"doc {i} " + "y" * (i % 13 * 40) for i in range(60)]
    s = scheduler(backend, max_call_tokens=600)
    try:
        with pytest.raises(TypeError, match="cannot tokenise"):
            s.submit(ScoreRequest("__poison__", docs)).result(10)
        assert s.submit(ScoreRequest("after", ["a"])).result(10)
    finally:
        s.close(5)
    poisoned = [e for e in backend.events if "__poison__" in e[1]]
    assert poisoned == [("start", ("__poison__",))]
    assert (s.queued_docs, s.queued_tokens, s.queued_chars) == (0, 0, 0)
