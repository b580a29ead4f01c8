"""What the routes share, and the one path a request takes to its scores.

:class:`ServiceState` holds the settings, the backend once loaded, its scheduler and the
metrics. :class:`Service` adds where the scores come from (the backend's scheduler under
its :class:`~reranker.service.health.BackendSupervisor`, or a
:class:`~reranker.service.pool.ScoringPool`), the backend's start and stop, and
:meth:`Service.run`, which every API dialect scores through.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from fastapi import Request

from reranker.config import ServerSettings
from reranker.core.errors import InvalidRequest
from reranker.core.meta import ScoreMeta
from reranker.core.protocol import RerankBackend, ScoreRequest
from reranker.service.errors import ClientDisconnected, ScoringTimeout, ServiceUnavailable
from reranker.service.health import BackendSupervisor
from reranker.service.logs import logger
from reranker.service.metrics import ServiceMetrics
from reranker.service.pool import ScoringPool
from reranker.service.scheduler import BatchScheduler, RequestExpired, Ticket


class ServiceState:
    """What the routes share: settings, backend (once loaded), scheduler, metrics."""

    def __init__(self, server: ServerSettings, backend_name: str, model: str) -> None:
        self.server = server
        self.backend_name = backend_name
        self.model = model
        self.metrics = ServiceMetrics()
        self.backend: RerankBackend | None = None
        self.scheduler: BatchScheduler | None = None
        self.load_error: BaseException | None = None
        self.stopping = False
        """Set while the server drains: every response asks the client to close its
        connection, so none sends its next request on a connection about to close."""

    def attach(self, backend: RerankBackend) -> None:
        """Put a loaded backend behind a scheduler."""
        self.backend = backend
        self.model = backend.model_name
        self.scheduler = BatchScheduler(
            backend,
            max_queue_docs=self.server.max_queue_docs,
            batch_wait_ms=self.server.batch_wait_ms,
            on_batch=self.metrics.observe_batch,
            max_call_tokens=self.server.max_call_tokens,
            max_queue_tokens=self.server.max_queue_tokens,
            max_queue_chars=self.server.max_queue_chars,
            on_drop=self.metrics.observe_drop,
            on_isolate=self.metrics.isolation_retries.inc,
            overlap_calls=self.server.overlap_calls,
        )
        self.metrics.bind_scheduler(self.scheduler)


def _no_backend() -> RerankBackend:
    raise RuntimeError("this app scores through its pool; it loads no backend")


class Service:
    """One app's scoring: its state, and its backend (loaded here, ``load_backend``) or
    its ``pool`` of backends elsewhere, one of the two.

    ``on_load_error(exc)`` is called when the first load fails, ``on_backend_failure(reason)``
    when a backend that died while serving is not restarted.
    """

    def __init__(
        self,
        state: ServiceState,
        load_backend: Callable[[], RerankBackend] | None = None,
        pool: ScoringPool | None = None,
        on_load_error: Callable[[BaseException], None] | None = None,
        on_backend_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self.pool = pool
        self._load_backend = load_backend
        self._on_load_error = on_load_error
        self.supervisor = BackendSupervisor(state, load_backend or _no_backend, on_backend_failure)
        if pool is not None:
            pool.bind_metrics(state.metrics)

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """At the app's startup: start the pool, or load the backend in a thread (``/ready``
        answers 503 until it is in) and start its watchdog."""
        if self.pool is not None:
            await self.pool.start()
            return
        threading.Thread(target=self._load, name="backend-loader", daemon=True).start()
        self.supervisor.start()

    async def stop(self) -> None:
        """At the app's shutdown: close the pool, or drop what is still queued and close
        the backend."""
        if self.pool is not None:
            await self.pool.close()
            return
        # uvicorn has stopped taking requests and drained in-flight ones (for at most
        # shutdown_timeout_s): what is still queued has nobody waiting for it.
        state = self.state
        await self.supervisor.stop()
        if state.scheduler:
            await asyncio.to_thread(state.scheduler.close, 5.0)
        if state.backend:
            state.backend.close()

    def _load(self) -> None:
        state = self.state
        assert self._load_backend is not None
        try:
            state.attach(self._load_backend())
            logger.info("backend %s ready (model %s)", state.backend_name, state.model)
        except BaseException as exc:
            state.load_error = exc
            logger.error("backend %s failed to load: %s", state.backend_name, exc)
            if self._on_load_error:
                self._on_load_error(exc)

    # -- what the ops routes report ------------------------------------------------------

    async def health(self) -> tuple[str, str | None, dict[str, Any]]:
        """``(status, reason, details)``: the pool's, or the supervised backend's."""
        if self.pool is not None:
            return await self.pool.status()
        await self.supervisor.refresh()
        status, reason = self.supervisor.status()
        return status, reason, {}

    async def not_ready(self) -> tuple[str | None, dict[str, Any]]:
        """Why the service cannot score now (None: it can), and details to report."""
        if self.pool is not None:
            status, reason, details = await self.pool.status()
            return (None if status == "ok" else reason or status), details
        await self.supervisor.refresh()
        return self.supervisor.unavailable(), {}

    # -- scoring -------------------------------------------------------------------------

    def check_limits(self, query: str | None, n_docs: int, instruction: str | None = None) -> None:
        """Refuse (:class:`InvalidRequest`) a request over the per-request limits."""
        server = self.state.server
        if n_docs > server.max_docs_per_request:
            raise InvalidRequest(
                f"{n_docs} documents exceed the limit of {server.max_docs_per_request} per request",
                param="documents",
            )
        if query is not None and len(query) > server.max_query_chars:
            raise InvalidRequest(
                f"query has {len(query)} characters; the limit is {server.max_query_chars}",
                param="query",
            )
        limit = server.max_instruction_chars
        if instruction is not None and len(instruction) > limit:
            raise InvalidRequest(
                f"instruction has {len(instruction)} characters; the limit is {limit}",
                param="instruction",
            )

    async def run(
        self, request: ScoreRequest, http: Request | None = None
    ) -> tuple[list[float], ScoreMeta]:
        """Score ``request`` through the scheduler or the pool. The request is dropped
        unscored (and its queued work cancelled) when its deadline passes or the client of
        ``http`` disconnects; a task cancelled while waiting cancels it too."""
        state = self.state
        timeout = state.server.request_timeout_s
        future: Ticket | None = None
        if self.pool is not None:
            answer: asyncio.Future[Any] = asyncio.ensure_future(self.pool.score(request, timeout))
        else:
            unavailable = self.supervisor.unavailable()  # loading, restarting, dead: 503
            if unavailable is not None:
                raise ServiceUnavailable(unavailable)
            if state.scheduler is None:
                if state.load_error is not None:
                    raise ServiceUnavailable(f"backend failed to load: {state.load_error}")
                raise ServiceUnavailable("the model is still loading; retry shortly")
            future = state.scheduler.submit(request, timeout_s=timeout)
            answer = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(client_gone(http)) if http is not None else None
        waiting: list[asyncio.Future[Any]] = [answer] if gone is None else [answer, gone]
        reason = "cancelled"
        try:
            done, _ = await asyncio.wait(
                waiting,
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if answer not in done:
                reason = "disconnected" if gone in done else "expired"
                if reason == "disconnected":
                    raise ClientDisconnected("the client closed the connection")
                raise ScoringTimeout(f"scoring took longer than {timeout} s")
            try:
                scores, meta = answer.result()
            except RequestExpired:
                raise ScoringTimeout(f"scoring took longer than {timeout} s") from None
        finally:
            if future is not None and not future.done():
                future.cancel_for(reason)  # the scheduler drops it unscored
            if not answer.done():
                answer.cancel()
            if gone is not None and not gone.done():
                gone.cancel()
        state.metrics.documents.inc(meta["usable_docs"])
        state.metrics.tokens.inc(meta["scored_tokens"])
        state.metrics.dedup_ratio.observe(meta["dedup_ratio"])
        return scores, meta


async def client_gone(http: Request) -> None:
    """Return once the client of ``http`` (whose body has been read) has disconnected."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # not expected once the body is read; never spin
