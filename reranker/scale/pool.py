"""The HTTP front's view of the backend replicas: a :class:`ScoringPool` over a Ray Serve
deployment handle, with retries when a replica dies under a request."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from reranker.config import ScaleSettings
from reranker.errors import BackendDead
from reranker.protocol import ScoreRequest
from reranker.service.pool import PoolStatus

logger = logging.getLogger("reranker.scale")

BACKEND_DEPLOYMENT = "backend"
"""The deployment name of the backend replicas (the HTTP front's is ``http``)."""
STATUS_CACHE_S = 1.0


class RayPool:
    """Scores through the ``backend`` deployment's replicas (Ray's router picks one).

    A request whose replica dies (its process killed, its node lost) or whose backend
    died is sent again to another replica, up to ``scale.retries`` times; after that the
    app answers 503 with ``Retry-After``. Other errors are the replica's own, raised here
    as the same typed errors the single-process service raises.
    """

    def __init__(self, handle: Any, scale: ScaleSettings) -> None:
        self.handle = handle
        self.scale = scale
        self.metrics: Any = None
        self._status: tuple[float, tuple[PoolStatus, str | None, dict[str, Any]]] | None = None

    def bind_metrics(self, metrics: Any) -> None:
        """Count answers per replica and retries in the app's metrics."""
        self.metrics = metrics

    async def score(
        self, request: ScoreRequest, timeout_s: float
    ) -> tuple[list[float], dict[str, Any]]:
        """``(scores, meta)`` from one replica; see the class docstring for failures."""
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import ReplicaUnavailableError

        from reranker.service.app import ServiceUnavailable

        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            remaining = max(0.001, deadline - time.monotonic())
            response = self.handle.score.remote(request, remaining)
            try:
                out = await response
            except asyncio.CancelledError:
                response.cancel()  # the replica drops the request unscored
                raise
            except RayTaskError as exc:
                cause = exc.cause
                if not isinstance(cause, BackendDead):
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise
                failure, reason = f"its backend died: {cause}", "backend_dead"
            except (RayActorError, ReplicaUnavailableError) as exc:
                failure, reason = f"its replica died: {type(exc).__name__}", "replica_died"
            else:
                if self.metrics is not None:
                    self.metrics.replica_requests.labels(out["replica"], out["node"]).inc()
                return out["scores"], out["meta"]
            attempt += 1
            if attempt > self.scale.retries or time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    f"no replica could score this request ({failure}; tried "
                    f"{attempt} time{'s' if attempt > 1 else ''}); retry shortly"
                )
            logger.warning("request sent to another replica: %s", failure)
            if self.metrics is not None:
                self.metrics.replica_retries.labels(reason).inc()
            await asyncio.sleep(min(0.1 * attempt, 1.0))

    async def status(self) -> tuple[PoolStatus, str | None, dict[str, Any]]:
        """``ok`` while at least one backend replica is running (Ray Serve's view, at most
        a second old), else ``loading`` with the deployment's message."""
        now = time.monotonic()
        if self._status is not None and now - self._status[0] < STATUS_CACHE_S:
            return self._status[1]
        result = await asyncio.to_thread(self._read_status)
        self._status = (time.monotonic(), result)
        return result

    def _read_status(self) -> tuple[PoolStatus, str | None, dict[str, Any]]:
        from ray import serve

        try:
            app = serve.status().applications.get(self.scale.app_name)
        except Exception as exc:  # the controller is restarting: say so, don't fail
            return "loading", f"Ray Serve's status is unavailable: {exc}", {}
        deployment = app.deployments.get(BACKEND_DEPLOYMENT) if app is not None else None
        if deployment is None:
            return "loading", "the backend replicas are not deployed yet", {}
        states = {
            str(getattr(k, "value", k)).lower(): v for k, v in deployment.replica_states.items()
        }
        details = {"replicas": states}
        if states.get("running", 0) > 0:
            return "ok", None, details
        message = deployment.message or str(getattr(deployment.status, "value", deployment.status))
        return "loading", f"no backend replica is running: {message}", details

    async def close(self) -> None:
        """Nothing to release: Ray Serve owns the replicas."""
