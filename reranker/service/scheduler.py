"""One worker thread owns the backend; concurrent requests share its batches.

Requests queue up; the worker takes everything queued (up to a document cap), waits a
moment for more to arrive, and scores them in one ``backend.score_requests`` call, whose
documents go into shared length-sorted batches. The queue is bounded by documents: past
the bound, :class:`Overloaded` (HTTP 429) instead of unbounded memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from reranker.errors import InvalidRequest, Overloaded
from reranker.protocol import RerankBackend, ScoreRequest

logger = logging.getLogger(__name__)

Result = tuple[list[float], dict[str, Any]]


@dataclass
class _Item:
    request: ScoreRequest
    docs: int
    future: Future[Result]
    enqueued: float


class BatchScheduler:
    """Queue + worker thread in front of one backend.

    ``on_batch(requests, docs, seconds)`` is called after each coalesced run (metrics).
    """

    def __init__(
        self,
        backend: RerankBackend,
        max_queue_docs: int = 8192,
        batch_wait_ms: float = 2.0,
        max_batch_docs: int | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.backend = backend
        self.max_queue_docs = max_queue_docs
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_batch_docs = max_batch_docs or max_queue_docs
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._queued_docs = 0
        self._cond = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="rerank-scheduler", daemon=True)
        self._worker.start()

    @property
    def queued_docs(self) -> int:
        """Documents waiting in the queue (not yet taken by the worker)."""
        return self._queued_docs

    @property
    def queued_requests(self) -> int:
        """Requests waiting in the queue."""
        return len(self._queue)

    def submit(self, request: ScoreRequest) -> Future[Result]:
        """Queue a request; the future resolves to ``(scores, meta)`` or raises."""
        docs = max(1, len(request.docs or []))
        future: Future[Result] = Future()
        with self._cond:
            if self._closing:
                raise Overloaded("the service is shutting down", retry_after=5.0)
            if self._queued_docs + docs > self.max_queue_docs and self._queue:
                raise Overloaded(
                    f"queue full ({self._queued_docs} documents waiting, limit "
                    f"{self.max_queue_docs}); retry shortly",
                    retry_after=1.0,
                )
            self._queue.append(_Item(request, docs, future, time.perf_counter()))
            self._queued_docs += docs
            self._cond.notify()
        return future

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
        if self.batch_wait_s:
            time.sleep(self.batch_wait_s)  # let concurrent requests join this run
        with self._cond:
            taken: list[_Item] = []
            docs = 0
            while self._queue and (not taken or docs + self._queue[0].docs <= self.max_batch_docs):
                item = self._queue.popleft()
                taken.append(item)
                docs += item.docs
            self._queued_docs -= docs
            return taken

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            live = [i for i in items if i.future.set_running_or_notify_cancel()]
            if not live:
                continue
            start = time.perf_counter()
            try:
                results = self.backend.score_requests([i.request for i in live])
            except Exception as exc:  # backend failure: every request of this run gets it
                logger.exception("backend failed on a batch of %d requests", len(live))
                for item in live:
                    item.future.set_exception(exc)
                continue
            for item, result in zip(live, results, strict=True):
                if isinstance(result, InvalidRequest):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            if self._on_batch:
                self._on_batch(len(live), sum(i.docs for i in live), time.perf_counter() - start)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout)
