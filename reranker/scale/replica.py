"""The Ray Serve deployments: :class:`BackendReplica` and, with ``ingress: ray``,
:class:`HTTPFront`.

They are plain classes; :func:`reranker.scale.runner.build_application` turns them into
deployments with the options of ``services.rerank.scale``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from reranker.core.protocol import ScoreRequest

logger = logging.getLogger("reranker.scale")


class BackendReplica:
    """One backend and its :class:`~reranker.service.scheduler.BatchScheduler` in a Ray
    Serve replica: the requests routed here are batched together, as in the single-process
    service, under the same limits (``services.rerank.server``)."""

    def __init__(self, backend_name: str, options: dict[str, Any], server: dict[str, Any]):
        import ray
        from ray import serve

        from reranker.config import ServerSettings
        from reranker.core.registry import load_backend, load_backend_class
        from reranker.service.state import ServiceState

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        cls = load_backend_class(backend_name)
        backend_options = cls.Options.model_validate(options)
        settings = ServerSettings.model_validate(server)
        self.state = ServiceState(settings, backend_name, backend_options.model_name)
        self.state.attach(load_backend(backend_name, backend_options))
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()[:12]
        logger.info(
            "replica %s (pid %d, node %s): backend %s ready",
            self.replica,
            os.getpid(),
            self.node,
            backend_name,
        )

    async def score(self, request: ScoreRequest, timeout_s: float) -> dict[str, Any]:
        """Score ``request`` (with the others routed here); a cancelled call drops it."""
        scheduler = self.state.scheduler
        assert scheduler is not None
        ticket = scheduler.submit(request, timeout_s=timeout_s)
        try:
            scores, meta = await asyncio.wrap_future(ticket)
        except asyncio.CancelledError:
            ticket.cancel_for("cancelled")
            raise
        return {"scores": scores, "meta": meta, "replica": self.replica, "node": self.node}

    def check_health(self) -> None:
        """Ray Serve calls this every ``health_check_period_s``: a backend that can no
        longer score fails it, and Ray replaces the replica."""
        backend = self.state.backend
        reason = backend.health() if backend is not None else "no backend"
        if reason is not None:
            raise RuntimeError(f"backend unhealthy: {reason}")

    def __del__(self) -> None:
        # Ray Serve calls this at a graceful stop, once in-flight requests are done.
        state = getattr(self, "state", None)
        if state is None:
            return
        if state.scheduler is not None:
            state.scheduler.close(5.0)
        if state.backend is not None:
            state.backend.close()


class HTTPFront:
    """The HTTP app of the single-process service, scoring through the replicas
    (:class:`reranker.scale.pool.RayPool`); it holds no model."""

    def __init__(
        self,
        replicas: Any,
        backend_name: str,
        model: str,
        server: dict[str, Any],
        scale: dict[str, Any],
    ) -> None:
        self.replicas = replicas
        self.backend_name = backend_name
        self.model = model
        self.server = server
        self.scale = scale

    def __serve_build_asgi_app__(self) -> Any:
        from reranker.config import ScaleSettings, ServerSettings
        from reranker.scale.pool import RayPool
        from reranker.service.app import create_app

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        scale = ScaleSettings.model_validate(self.scale)
        self.pool = RayPool(self.replicas, scale)
        return create_app(
            None,
            ServerSettings.model_validate(self.server),
            self.backend_name,
            self.model,
            pool=self.pool,
            request_ids_from_proxy=True,
        )

    def drain_state(self) -> tuple[bool, int]:
        """``(draining, requests in flight)`` of this front (``reranker serve`` waits for
        every front to drain before it removes the application)."""
        pool = getattr(self, "pool", None)
        return (pool.draining, pool.in_flight) if pool is not None else (True, 0)
