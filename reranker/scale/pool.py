"""The HTTP app's view of the backend replicas: a :class:`ScoringPool` over a Ray Serve
deployment handle, with retries when a replica dies under a request."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from reranker.config import ScaleSettings
from reranker.core.errors import BackendDead, Overloaded
from reranker.core.meta import ScoreMeta
from reranker.core.protocol import ScoreRequest
from reranker.service.pool import PoolStatus

logger = logging.getLogger("reranker.scale")

BACKEND_DEPLOYMENT = "backend"
"""The deployment name of the backend replicas (the HTTP front's is ``http``)."""
STATUS_CACHE_S = 1.0
DRAIN_POLL_S = 0.25
KV_NAMESPACE = "reranker"


def drain_key(app_name: str) -> str:
    """The Ray KV key that tells an application's HTTP fronts to stop taking requests."""
    return f"drain/{app_name}"


class RayPool:
    """Scores through the ``backend`` deployment's replicas (Ray's router picks one).

    A request whose replica dies (its process killed, its node lost) or whose backend
    died is sent again to another replica, up to ``scale.retries`` times; after that the
    app answers 503 with ``Retry-After``. One refused by a full replica (429) is tried
    once more, on the replica the router then prefers. Other errors are the replica's
    own, raised here as the same typed errors the single-process service raises.

    With ``ingress: ray``, once the service is stopping (``reranker serve`` got SIGTERM
    and set the drain key), new requests get 503 with ``Retry-After`` and ``/ready`` 503,
    while the requests in flight finish (:attr:`in_flight` counts them).
    """

    def __init__(self, handle: Any, scale: ScaleSettings) -> None:
        self.handle = handle
        self.scale = scale
        self.metrics: Any = None
        self.in_flight = 0
        self.draining = False
        self._status: tuple[float, tuple[PoolStatus, str | None, dict[str, Any]]] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """With ``ingress: ray``, watch the drain key (every 0.25 s); a pool in the
        ``reranker serve`` process drains with its HTTP server."""
        if self.scale.ingress == "ray":
            self._watcher = asyncio.create_task(self._watch_drain())

    async def _watch_drain(self) -> None:
        from ray.experimental.internal_kv import _internal_kv_get

        key = drain_key(self.scale.app_name)
        while not self.draining:
            try:
                flag = await asyncio.to_thread(_internal_kv_get, key, namespace=KV_NAMESPACE)
            except Exception as exc:  # the GCS restarting: look again
                logger.debug("reading the drain key: %s", exc)
                flag = None
            if flag:
                self.begin()
                return
            await asyncio.sleep(DRAIN_POLL_S)

    def begin(self) -> None:
        """Refuse new requests (503 + ``Retry-After``) from now on: the service is
        stopping (:class:`reranker.service.server.Drain`)."""
        if not self.draining:
            self.draining = True
            logger.info("stopping: new requests are refused, %d in flight", self.in_flight)

    def idle(self) -> bool:
        """Whether no request is in flight."""
        return self.in_flight == 0

    def bind_metrics(self, metrics: Any) -> None:
        """Count answers per replica and retries in the app's metrics."""
        self.metrics = metrics

    async def score(self, request: ScoreRequest, timeout_s: float) -> tuple[list[float], ScoreMeta]:
        """``(scores, meta)`` from one replica; see the class docstring for failures."""
        from reranker.service.errors import ServiceUnavailable

        if self.draining:
            raise ServiceUnavailable("the service is shutting down; retry on another instance")
        self.in_flight += 1
        try:
            return await self._score(request, timeout_s)
        finally:
            self.in_flight -= 1

    async def _score(
        self, request: ScoreRequest, timeout_s: float
    ) -> tuple[list[float], ScoreMeta]:
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import ReplicaUnavailableError

        from reranker.service.errors import ServiceUnavailable

        deadline = time.monotonic() + timeout_s
        attempt = 0
        overload_retried = False
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
                if isinstance(cause, Overloaded) and not overload_retried:
                    # That replica's queue is full: another one's may not be (the router
                    # prefers the least busy). One more try, then the 429 stands.
                    overload_retried = True
                    if self.metrics is not None:
                        self.metrics.replica_retries.labels("replica_full").inc()
                    continue
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
        a second old), else ``loading`` with the deployment's message; ``draining`` once
        the service is stopping."""
        if self.draining:
            return "draining", "the service is shutting down", {}
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
        """Stop watching the drain key (Ray Serve owns the replicas)."""
        if self._watcher is not None:
            self._watcher.cancel()
