"""One worker thread owns the backend; concurrent requests share its calls, fairly.

Every request is costed when it arrives, in **estimated tokens** (characters / 3 per
prompt, each capped at ``max_model_len``: no tokenizer needed). A request costing more
than ``max_call_tokens`` is cut into **pieces** of at most that cost (its unique
documents, shortest first, so each piece batches well); a smaller one is one piece.

The worker loop:

- drops every queued request whose caller has gone (its future was cancelled: client
  disconnected, timed out) or whose deadline has passed, before any of it is scored;
- takes pieces in **fair-queuing** order (weighted fair queuing with equal weights:
  each piece is tagged with the virtual time at which an equal share of the backend
  would have finished it, and the lowest tags go first), at most one piece a request,
  up to ``max_call_tokens`` a call, and scores them in one backend call (their
  documents share batches). Every waiting request progresses at the same rate, so a
  two-document request queued behind huge ones, or behind many medium ones, waits for
  about the calls in flight (one, or two where calls overlap), while a huge one is never
  starved;
- when a call raises (anything but a per-request :class:`InvalidRequest`), it re-scores
  the call's requests in halves until the failing one is found: only that request gets
  the error, every other one its scores;
- puts a split request's pieces back together (scores in input order, counts summed);
- where the backend runs asynchronously (``overlaps_calls``: a GPU), keeps one call
  queued ahead (``overlap_calls``): it takes and starts the next call (tokenises, packs
  and queues its batches) while the device runs the current one, then collects the
  current one's results, so the device does not wait for the host between calls. A split
  request's next piece may go in that next call. A call whose start failed is collected
  (isolated) before the next one is taken.

Admission (:meth:`BatchScheduler.submit`) knows what the queue costs and how fast the
backend goes (estimated tokens a second, an average over recent calls): a request is
refused with :class:`Overloaded` (HTTP 429) when the queue already holds too many
estimated tokens, characters or documents, or when its estimated wait exceeds its
timeout, with ``retry_after`` = the estimated seconds until it would be admitted.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from reranker.core.chunking import Chunking
from reranker.core.errors import BackendDead, InvalidRequest, Overloaded, RerankerError
from reranker.core.meta import ScoreMeta, merge_pieces
from reranker.core.protocol import Outcome, RerankBackend, ScoreRequest, document_text

logger = logging.getLogger(__name__)

Result = tuple[list[float], ScoreMeta]

CHARS_PER_TOKEN = 3.0
"""Characters per token assumed when costing a prompt before it is tokenized (Qwen3's
tokenizer averages ~4 on English prose, fewer on code and other scripts: 3 errs high)."""
PROMPT_CHARS = 300
"""Characters of the prompt around query, instruction and document (system message, turn
markers, the ``<Instruct>``/``<Query>``/``<Document>`` labels, the assistant suffix)."""

_DOC_INDEX = re.compile(r"\b(docs|documents)\[(\d+)\]")


class RequestExpired(RerankerError):
    """The request's deadline passed before it was scored; it was dropped."""


class Ticket(Future[Result]):
    """The future :meth:`BatchScheduler.submit` returns; ``cancel_for`` says why."""

    drop_reason: str | None = None

    def cancel_for(self, reason: str) -> bool:
        """Cancel, naming the reason the drop metrics count (``disconnected``, ...)."""
        if self.drop_reason is None:
            self.drop_reason = reason
        return self.cancel()


@dataclass(eq=False)
class _Piece:
    request: ScoreRequest
    positions: list[int] | None  # the input positions of its docs; None: the whole request
    cost: int
    docs: int


@dataclass(eq=False)
class _Item:
    future: Ticket
    pieces: deque[_Piece]
    input_docs: int
    chars: int
    deadline: float | None
    cost_left: int = 0
    docs_left: int = 0
    done: list[tuple[_Piece, Result]] = field(default_factory=list)
    tag: float = 0.0  # virtual finish time of its next piece (fair queuing)
    in_flight: int = 0  # its pieces in calls started and not yet collected
    finished: bool = False  # answered or dropped: no more of it is scored

    def __post_init__(self) -> None:
        self.cost_left = sum(p.cost for p in self.pieces)
        self.docs_left = sum(p.docs for p in self.pieces)


@dataclass(eq=False)
class _Call:
    """A backend call started and not yet collected."""

    pieces: list[tuple[_Item, _Piece]]
    collect: Callable[[], list[Outcome]]  # waits for the results; raises the call's error
    cost: int
    started: float
    failed_to_start: bool = False


def _returning(results: list[Outcome]) -> Callable[[], list[Outcome]]:
    return lambda: results


def _raising(exc: BaseException) -> Callable[[], list[Outcome]]:
    def collect() -> list[Outcome]:
        raise exc

    return collect


def _text_chars(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | bytearray) else 0


def plan_pieces(
    request: ScoreRequest,
    max_call_tokens: int,
    max_model_len: int,
    default_instruction: str = "",
    sort_by_length: bool = True,
    chunking: Chunking | None = None,
) -> tuple[list[_Piece], int]:
    """Cut ``request`` into pieces of at most ``max_call_tokens`` estimated tokens.

    Returns the pieces and the characters the request holds. Duplicate documents go to one
    piece together (they are scored once, as unsplit); unusable ones (None, blank) go to
    the first piece. A request within the budget is one piece: the request itself.
    """
    docs = request.docs
    query_chars = _text_chars(request.query)
    instruction = request.instruction if request.instruction is not None else default_instruction
    fixed = query_chars + _text_chars(instruction) + PROMPT_CHARS
    if isinstance(docs, str | bytes) or not isinstance(docs, Sequence):
        # Not a list: the backend refuses it (InvalidRequest) or scores nothing.
        return [_Piece(request, None, 1, 1)], fixed
    doc_list = list(docs)
    query_ok = document_text(request.query) is not None
    cap = max_model_len
    if request.max_doc_tokens is not None and request.max_doc_tokens > 0:
        cap = min(cap, math.ceil(fixed / CHARS_PER_TOKEN) + request.max_doc_tokens)
    groups: dict[str, list[int]] = {}
    unusable: list[int] = []
    chars = fixed
    for i, doc in enumerate(doc_list):
        chars += _text_chars(doc)
        key = document_text(doc) if query_ok else None
        if key is None:
            unusable.append(i)
        else:
            groups.setdefault(key, []).append(i)
    if chunking is not None and chunking.mode == "chunk":
        costs = {key: _chunked_cost(fixed, len(key), chunking, cap) for key in groups}
    else:
        costs = {
            key: max(1, min(cap, math.ceil((fixed + len(key)) / CHARS_PER_TOKEN))) for key in groups
        }
    total = sum(costs.values())
    if total <= max_call_tokens or len(groups) <= 1:
        return [_Piece(request, None, max(1, total), max(1, len(doc_list)))], chars
    keys = list(groups)
    if sort_by_length:
        keys.sort(key=costs.__getitem__)
    pieces: list[_Piece] = []
    positions: list[int] = list(unusable)
    cost = 0
    for key in keys:
        if positions and cost and cost + costs[key] > max_call_tokens:
            pieces.append(_make_piece(request, doc_list, positions, cost))
            positions, cost = [], 0
        positions.extend(groups[key])
        cost += costs[key]
    pieces.append(_make_piece(request, doc_list, positions, cost))
    return pieces, chars


def _chunked_cost(fixed_chars: int, doc_chars: int, chunking: Chunking, cap: int) -> int:
    """Estimated tokens of scoring a document of ``doc_chars`` in chunks: one prompt
    per chunk, at most ``max_chunks_per_doc`` of them."""
    fixed = math.ceil(fixed_chars / CHARS_PER_TOKEN)
    doc = math.ceil(doc_chars / CHARS_PER_TOKEN)
    if doc <= chunking.chunk_tokens:
        return max(1, min(cap, fixed + doc))
    stride = chunking.chunk_tokens - chunking.chunk_overlap
    chunks = min(chunking.max_chunks_per_doc, math.ceil((doc - chunking.chunk_overlap) / stride))
    return chunks * min(cap, fixed + chunking.chunk_tokens)


def _make_piece(request: ScoreRequest, docs: list[Any], positions: list[int], cost: int) -> _Piece:
    positions = sorted(positions)
    part = ScoreRequest(
        request.query,
        [docs[i] for i in positions],
        request.normalize,
        request.instruction,
        request.max_doc_tokens,
        request.chunking,
    )
    return _Piece(part, positions, cost, len(positions))


def _merge(input_docs: int, done: list[tuple[_Piece, Result]]) -> Result:
    """One request's result from its pieces' results."""
    if len(done) == 1 and done[0][0].positions is None:
        return done[0][1]
    scores = [0.0] * input_docs
    meta = merge_pieces(
        [m for _, (_, m) in done], [piece.positions or () for piece, _ in done], input_docs
    )
    for piece, (piece_scores, _) in done:
        for position, score in zip(piece.positions or (), piece_scores, strict=True):
            scores[position] = score
    return scores, meta


def _renumber(exc: InvalidRequest, piece: _Piece) -> InvalidRequest:
    """A piece's input error, naming documents by their place in the whole request."""
    positions = piece.positions
    if positions is None:
        return exc

    def fix(text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            i = int(m.group(2))
            return f"{m.group(1)}[{positions[i] if i < len(positions) else i}]"

        return _DOC_INDEX.sub(sub, text)

    fixed = InvalidRequest(fix(str(exc)), param=fix(exc.param) if exc.param else exc.param)
    fixed.__cause__ = exc
    return fixed


def _settle(future: Future[Result], result: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless its caller has cancelled it meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class BatchScheduler:
    """Queue + worker thread in front of one backend.

    ``on_batch(requests, docs, seconds)`` is called after each backend call (metrics);
    ``on_drop(reason, docs)`` when a request is dropped before all of it was scored
    (``reason``: ``disconnected``, ``expired``, ``cancelled``; ``docs``: the documents
    left unscored); ``on_isolate()`` when a failed call is re-run in halves.
    ``overlap_calls``: start the next call while the backend's device runs the current
    one, where the backend can (its ``overlaps_calls``); ``overlap`` says whether it does.
    """

    def __init__(
        self,
        backend: RerankBackend,
        max_queue_docs: int = 8192,
        batch_wait_ms: float = 0.0,
        max_batch_docs: int | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
        *,
        max_call_tokens: int = 131072,
        max_queue_tokens: int = 4_194_304,
        max_queue_chars: int = 32 * 1024 * 1024,
        on_drop: Callable[[str, int], None] | None = None,
        on_isolate: Callable[[], None] | None = None,
        overlap_calls: bool = True,
    ) -> None:
        self.backend = backend
        self.overlap = overlap_calls and bool(getattr(backend, "overlaps_calls", False))
        self.max_queue_docs = max_queue_docs
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_batch_docs = max_batch_docs
        self.max_call_tokens = max_call_tokens
        self.max_queue_tokens = max_queue_tokens
        self.max_queue_chars = max_queue_chars
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._on_isolate = on_isolate
        options = getattr(backend, "options", None)
        self._max_model_len = int(getattr(options, "max_model_len", None) or 4096)
        default_instruction = getattr(backend, "default_instruction", None)
        self._instruction = str((default_instruction() if default_instruction else "") or "")
        self._sort = bool(getattr(options, "sort_by_doc_length", True))
        self._waiting: deque[_Item] = deque()  # items with pieces left to take
        self._in_flight: list[_Call] = []  # calls started, not yet collected (oldest first)
        self._last_done = 0.0  # when the last call was collected
        self._isolating = 0  # failed calls being re-scored in halves now
        self._isolated_at = 0.0  # when the last of them ended
        self._queued_docs = 0  # unscored documents of every request not yet answered
        self._queued_tokens = 0  # their estimated tokens (the calls in flight excluded)
        self._held_chars = 0  # characters held by every item not yet answered
        self._ewma_tokens = 0.0
        self._ewma_seconds = 0.0
        self._calls = 0
        self._vtime = 0.0  # virtual time: work done per waiting request (fair queuing)
        self._cond = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="rerank-scheduler", daemon=True)
        self._worker.start()

    # -- what the queue holds ---------------------------------------------------------

    @property
    def queued_docs(self) -> int:
        """Documents waiting for the backend (not in the calls in flight)."""
        return self._queued_docs

    @property
    def queued_tokens(self) -> int:
        """Estimated prompt tokens waiting for the backend."""
        return self._queued_tokens

    @property
    def queued_chars(self) -> int:
        """Characters of text held by requests not yet answered."""
        return self._held_chars

    @property
    def queued_requests(self) -> int:
        """Requests waiting (a split request counts once, until its last piece is taken)."""
        return len(self._waiting)

    @property
    def tokens_per_second(self) -> float | None:
        """The backend's measured rate, in estimated tokens a second (None before a call)."""
        if self._ewma_seconds <= 0:
            return None
        return self._ewma_tokens / self._ewma_seconds

    # -- admission --------------------------------------------------------------------

    def submit(self, request: ScoreRequest, timeout_s: float | None = None) -> Ticket:
        """Queue a request; the future resolves to ``(scores, meta)`` or raises.

        ``timeout_s``: the caller's deadline. A request still queued then is dropped
        (:class:`RequestExpired`); one whose estimated wait exceeds it is refused now.
        Raises :class:`Overloaded` when the queue is full or too slow for it.
        """
        resolve = getattr(self.backend, "resolve_chunking", None)
        pieces, chars = plan_pieces(
            request,
            self.max_call_tokens,
            self._max_model_len,
            self._instruction,
            self._sort,
            resolve(request) if resolve is not None else None,
        )
        now = time.perf_counter()
        future = Ticket()
        item = _Item(
            future,
            deque(pieces),
            len(request.docs) if isinstance(request.docs, Sequence) else 0,
            chars,
            None if timeout_s is None else now + timeout_s,
        )
        with self._cond:
            if self._closing:
                raise Overloaded("the service is shutting down", retry_after=5.0)
            item.tag = self._vtime + item.pieces[0].cost
            if self._waiting or self._in_flight:
                self._admit(item, timeout_s, now)
            self._waiting.append(item)
            self._queued_docs += item.docs_left
            self._queued_tokens += item.cost_left
            self._held_chars += item.chars
            self._cond.notify()
        return future

    def _admit(self, item: _Item, timeout_s: float | None, now: float) -> None:
        """Raise :class:`Overloaded` when ``item`` must not join the queue (lock held)."""
        rate = self.tokens_per_second
        queued = self._queued_tokens

        def drain_s(share: float) -> float:
            # Seconds until ``share`` of the queued work is done, at the measured rate.
            return share * queued / rate if rate else 1.0

        limits = (
            ("documents", self._queued_docs, item.docs_left, self.max_queue_docs),
            ("estimated tokens", queued, item.cost_left, self.max_queue_tokens),
            ("characters", self._held_chars, item.chars, self.max_queue_chars),
        )
        for what, held, adding, limit in limits:
            if held + adding > limit:
                excess = (held + adding - limit) / max(held, 1)
                raise Overloaded(
                    f"queue full ({held} {what} waiting, limit {limit}); retry later",
                    retry_after=max(1.0, drain_s(min(1.0, excess))),
                )
        if rate and timeout_s is not None:
            wait = self._estimated_wait(item, rate, now)
            if wait > timeout_s:
                raise Overloaded(
                    f"the queue would take about {wait:.0f} s to score this request, longer "
                    f"than the {timeout_s:g} s timeout; retry later",
                    retry_after=max(1.0, wait - timeout_s),
                )

    def _estimated_wait(self, item: _Item, rate: float, now: float) -> float:
        """Seconds until ``item`` would be scored: the calls in flight, then every queued
        piece tagged to go before its last one (fair queuing), then its own pieces."""
        last_tag = self._vtime + item.cost_left
        ahead = 0
        for other in self._waiting:
            tag = other.tag
            for k, piece in enumerate(other.pieces):
                if k:
                    tag += piece.cost
                if tag > last_tag:
                    break
                ahead += piece.cost
        in_flight = 0.0
        if self._in_flight:
            # they run one after another, the oldest since its start or since the call
            # before it was collected, whichever is later (it was queued behind that one)
            since = max(self._in_flight[0].started, self._last_done)
            cost = sum(call.cost for call in self._in_flight)
            in_flight = max(0.0, cost / rate - (now - since))
        return in_flight + (ahead + item.cost_left) / rate

    # -- the worker -------------------------------------------------------------------

    def _next_call(self, wait: bool = True) -> list[tuple[_Item, _Piece]] | None:
        """Take the next call's pieces: drop the abandoned; take the pieces of lowest tag
        (one a request) up to the budget; advance the virtual time by the call's share
        per request. ``wait``: wait for work (else an empty list when none is queued).
        None once closing with nothing queued."""
        with self._cond:
            idle = not self._waiting
            while wait and not self._waiting and not self._closing:
                self._cond.wait()
            if not self._waiting:
                return None if self._closing else []
        if wait and idle and self.batch_wait_s:
            time.sleep(self.batch_wait_s)  # let concurrent requests join this call
        with self._cond:
            now = time.perf_counter()
            for item in [i for i in self._waiting if self._abandoned(i, now)]:
                self._drop(item, now)
            taken: list[tuple[_Item, _Piece]] = []
            cost = docs = 0
            waiting = len(self._waiting)
            for item in sorted(self._waiting, key=lambda i: i.tag):  # ties: first come
                piece = item.pieces[0]
                if taken and (
                    cost + piece.cost > self.max_call_tokens
                    or (self.max_batch_docs and docs + piece.docs > self.max_batch_docs)
                ):
                    continue  # a smaller piece further on may fit
                item.pieces.popleft()
                item.cost_left -= piece.cost
                item.docs_left -= piece.docs
                item.in_flight += 1
                taken.append((item, piece))
                cost += piece.cost
                docs += piece.docs
                if cost >= self.max_call_tokens:
                    break
            self._vtime += cost / max(1, waiting)
            for item, _ in taken:  # a split request's next piece waits its turn
                if item.pieces:
                    item.tag = max(self._vtime, item.tag) + item.pieces[0].cost
            self._waiting = deque(i for i in self._waiting if i.pieces)
            self._queued_docs -= docs
            self._queued_tokens -= cost
            return taken

    @staticmethod
    def _abandoned(item: _Item, now: float) -> bool:
        return item.future.cancelled() or (item.deadline is not None and now >= item.deadline)

    def _forget(self, item: _Item) -> None:
        """Take an item that will not be scored further out of the queue (lock held)."""
        if item.finished:
            return
        item.finished = True
        if item in self._waiting:
            self._waiting.remove(item)
        self._queued_docs -= item.docs_left
        self._queued_tokens -= item.cost_left
        self._held_chars -= item.chars

    def _drop(self, item: _Item, now: float) -> None:
        """Forget an abandoned item (lock held): its caller has gone or its time is up."""
        self._forget(item)
        expired = item.deadline is not None and now >= item.deadline
        if item.future.cancelled():
            reason = item.future.drop_reason or ("expired" if expired else "cancelled")
        else:
            reason = "expired"
            _settle(item.future, error=RequestExpired("the request's deadline passed"))
        if self._on_drop:
            self._on_drop(reason, item.docs_left)

    def _run(self) -> None:
        in_flight: _Call | None = None
        while True:
            # with a call in flight, take the next one without waiting: none queued, the
            # current one is collected first
            pieces = self._next_call(wait=in_flight is None)
            if pieces is None and in_flight is None:
                return
            started = self._start(pieces) if pieces else None
            if in_flight is not None:
                self._complete(in_flight)
            in_flight = started
            if in_flight is not None and (not self.overlap or in_flight.failed_to_start):
                # a failed start is isolated before a failing request's next piece is taken
                self._complete(in_flight)
                in_flight = None

    def _start(self, pieces: list[tuple[_Item, _Piece]]) -> _Call:
        """Start a backend call of ``pieces``; an error starting it is raised on collecting.
        Without overlap the backend scores the call here, and collecting returns the
        results."""
        requests = [piece.request for _, piece in pieces]
        call = _Call(pieces, list, sum(piece.cost for _, piece in pieces), time.perf_counter())
        with self._cond:
            self._in_flight.append(call)  # counted in estimated waits from now on
        try:
            if self.overlap:
                call.collect = self.backend.start_requests(requests)
            else:
                call.collect = _returning(self.backend.score_requests(requests))
        except BaseException as exc:  # a bug here must not leave callers waiting
            call.collect = _raising(exc)
            call.failed_to_start = True
        return call

    def _complete(self, call: _Call) -> None:
        """Collect a started call's results and hand each piece its outcome."""
        try:
            outcomes = self._collect(call)
        except BaseException as exc:  # a bug here must not leave callers waiting
            logger.exception("scheduler failed on a call of %d requests", len(call.pieces))
            outcomes = [exc] * len(call.pieces)
        with self._cond:
            now = time.perf_counter()
            self._last_done = now
            self._in_flight.remove(call)
            for (item, piece), outcome in zip(call.pieces, outcomes, strict=True):
                item.in_flight -= 1
                self._after(item, piece, outcome, now)

    def _after(self, item: _Item, piece: _Piece, outcome: Any, now: float) -> None:
        """Record a piece's outcome; answer or drop its item (lock held)."""
        if item.finished:  # answered with an error, or dropped, while this piece ran
            return
        if isinstance(outcome, BaseException):
            error = _renumber(outcome, piece) if isinstance(outcome, InvalidRequest) else outcome
            self._finish(item, error=error)
        elif outcome is None:  # its caller had gone when its call was retried
            self._drop(item, now)
        else:
            item.done.append((piece, outcome))
            if item.pieces or item.in_flight:
                return
            try:
                result = _merge(item.input_docs, item.done)
            except Exception as exc:
                logger.exception("could not merge the pieces of a request")
                self._finish(item, error=exc)
            else:
                self._finish(item, result=result)

    def _finish(self, item: _Item, result: Any = None, error: BaseException | None = None) -> None:
        self._forget(item)  # after an error part-way, its other pieces are never scored
        item.pieces.clear()
        _settle(item.future, result, error)

    def _score(self, pieces: list[tuple[_Item, _Piece]]) -> list[Any]:
        """One backend call, started and collected now (see :meth:`_collect`)."""
        call = self._start(pieces)
        try:
            return self._collect(call)
        finally:
            with self._cond:
                self._in_flight.remove(call)

    def _collect(self, call: _Call) -> list[Any]:
        """The results of a started call; when it raised, its pieces re-scored in
        halves, so that only the piece that fails gets the error. Returns a result, an
        exception or None (the caller has gone; not retried) per piece."""
        failure: Exception | None = None
        try:
            results = call.collect()
        except Exception as exc:
            failure = exc
        if failure is not None:  # handled out here: retries do not chain onto it
            return self._isolate(call.pieces, failure)
        # the device ran this call from its start, or from the previous call's end
        seconds = time.perf_counter() - max(call.started, self._last_done)
        pieces = call.pieces
        if len(results) != len(pieces):
            error = RuntimeError(f"backend returned {len(results)} results for {len(pieces)}")
            return [error] * len(pieces)
        if not self._isolating and call.started >= self._isolated_at:
            # (a call that ran beside a failed call's re-scoring would skew the rate)
            self._observe(call.cost, seconds)
        if self._on_batch:
            self._on_batch(len(pieces), sum(piece.docs for _, piece in pieces), seconds)
        return list(results)

    def _isolate(self, call: list[tuple[_Item, _Piece]], exc: Exception) -> list[Any]:
        """The outcomes of a call that raised ``exc``: its pieces re-scored in halves."""
        if len(call) == 1:  # the caller's 500 logs the traceback, with the request's id
            logger.warning("backend failed on a request: %r", exc)
            return [exc]
        dead = str(exc) if isinstance(exc, BackendDead) else self._backend_dead()
        if dead:  # nobody's request is to blame: every one gets the error
            logger.error("backend failed on a call of %d requests: %s", len(call), dead)
            return [exc] * len(call)
        logger.warning(
            "backend failed on a call of %d requests (%r); re-scoring them in halves "
            "so that only the failing one gets the error",
            len(call),
            exc,
        )
        if self._on_isolate:
            self._on_isolate()
        outcomes: list[Any] = []
        half = len(call) // 2
        self._isolating += 1
        try:
            for part in (call[:half], call[half:]):
                live = [
                    k
                    for k, (item, _) in enumerate(part)
                    if not (item.future.cancelled() or item.finished)
                ]
                redone: list[Any] = [None] * len(part)  # None: gone or already answered
                if live:
                    for k, outcome in zip(live, self._score([part[k] for k in live]), strict=True):
                        redone[k] = outcome
                outcomes.extend(redone)
        finally:
            self._isolating -= 1
            self._isolated_at = time.perf_counter()
        return outcomes

    def _backend_dead(self) -> str | None:
        """Why the backend cannot score any more (its ``health()``), or None."""
        health = getattr(self.backend, "health", None)
        if not callable(health):
            return None
        try:
            reason = health()
        except Exception as exc:
            return f"its health check failed: {exc!r}"
        return str(reason) if reason else None

    def _observe(self, tokens: int, seconds: float, weight: float = 0.3) -> None:
        """Fold one call into the measured rate (averages of tokens and of seconds, so
        that large calls weigh more than small ones). The first call is left out: it
        pays the backend's warm-up (lazy initialisation, first kernels)."""
        with self._cond:
            self._calls += 1
            if self._calls == 1:
                return
            if self._ewma_seconds <= 0:
                self._ewma_tokens, self._ewma_seconds = float(tokens), seconds
            else:
                self._ewma_tokens += weight * (tokens - self._ewma_tokens)
                self._ewma_seconds += weight * (seconds - self._ewma_seconds)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout)
