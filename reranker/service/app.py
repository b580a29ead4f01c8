"""The FastAPI app: the scoring service (:mod:`~reranker.service.state`), its routes
(:mod:`~reranker.service.routes`), error handlers (:mod:`~reranker.service.errors`) and
middleware (:mod:`~reranker.service.middleware`), put together.

The backend is loaded in a background thread at startup (``/ready`` answers 503 until it
is in), owned by a :class:`~reranker.service.scheduler.BatchScheduler`, and closed on
shutdown after the queue drains.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from reranker.config import ServerSettings
from reranker.core.protocol import RerankBackend
from reranker.service.errors import ErrorHandlers
from reranker.service.middleware import ServiceMiddleware, record_response
from reranker.service.pool import ScoringPool
from reranker.service.routes import cohere, ops, pages, protocol, vllm
from reranker.service.state import Service, ServiceState


def create_app(
    load_backend: Callable[[], RerankBackend] | None,
    server: ServerSettings | None = None,
    backend_name: str = "",
    model: str = "",
    on_load_error: Callable[[BaseException], None] | None = None,
    on_backend_failure: Callable[[str], None] | None = None,
    pool: ScoringPool | None = None,
    request_ids_from_proxy: bool = False,
) -> FastAPI:
    """Build the FastAPI app. ``load_backend`` runs in a thread at startup.

    ``on_load_error(exc)`` is called when the first load fails, ``on_backend_failure(reason)``
    when a backend that died while serving is not restarted (``on_backend_failure: exit``,
    or its restarts are spent): the server should stop then (``reranker serve`` does).

    With a ``pool`` (and no ``load_backend``) the app loads nothing: it scores through the
    pool's backends (Ray Serve replicas), and ``/health`` and ``/ready`` report theirs.
    ``request_ids_from_proxy``: a proxy in front (Ray Serve's) sets each request's
    ``x-request-id`` and puts it on the response; the app keeps that id.
    """
    if (load_backend is None) == (pool is None):
        raise ValueError("create_app takes load_backend or pool, one of the two")
    state = ServiceState(server or ServerSettings(), backend_name, model)
    service = Service(state, load_backend, pool, on_load_error, on_backend_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="reranker",
        version=__import__("reranker").__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    app.state.supervisor = service.supervisor
    errors = ErrorHandlers(service)
    errors.install(app)
    for routes in (cohere, vllm, protocol, ops):
        routes.add_routes(app, service)
    pages.add_routes(app)
    known_routes = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(
        ServiceMiddleware,
        state=state,
        known_routes=known_routes,
        on_unexpected=errors.on_unexpected,
        behind_id_proxy=request_ids_from_proxy,
    )
    # For what answers outside the app (reranker.service.server: a request head too slow).
    app.state.record_response = functools.partial(record_response, state)
    return app


__all__ = ["create_app"]
