"""The ops routes: ``/health`` (liveness), ``/ready`` (readiness), ``/metrics``
(Prometheus) and ``/v1/models``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from reranker.service.errors import json_error
from reranker.service.health import public_model_name
from reranker.service.state import Service


def add_routes(app: FastAPI, service: Service) -> None:
    """The ops routes of ``service``: its backend's (or its pool's) state and metrics."""
    state = service.state

    @app.get("/health", summary="Liveness: ok, loading, or dead (503)")
    async def health() -> Response:
        """``{"status": "ok" | "loading" | "draining" | "dead", "reason"}``: 200 while the
        process is serving, loading or stopping, 503 once its backend is dead (the process
        restarts it or exits)."""
        status, reason, details = await service.health()
        body = {"status": status, "reason": reason, "backend": state.backend_name, **details}
        return JSONResponse(body, 503 if status == "dead" else 200)

    @app.get("/ready", summary="Readiness: the backend can score (503 otherwise)")
    async def ready() -> Response:
        unavailable, details = await service.not_ready()
        if unavailable is None:
            return JSONResponse(
                {
                    "status": "ready",
                    "backend": state.backend_name,
                    "model": public_model_name(state.model),
                    **details,
                }
            )
        return json_error(
            503, unavailable, "service_unavailable", headers={"Retry-After": "5"}, **details
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if state.scheduler is not None:
            state.metrics.queue_depth.set(state.scheduler.queued_docs)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="The served model")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": state.model,
                    "object": "model",
                    "owned_by": "reranker",
                    "backend": state.backend_name,
                    "ready": (await service.not_ready())[0] is None,
                }
            ],
        }
